"""Fine-tuning: building the base model, adapters (PEFT), the LightningModule, callbacks, run folders."""
