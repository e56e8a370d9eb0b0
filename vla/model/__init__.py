"""OpenVLA, exact to the reference: configuration, vision towers, projector + Llama, processor, the action
tokenizer, the action layout and its heads, checkpoint IO, bitsandbytes quantization, the tiny default."""
