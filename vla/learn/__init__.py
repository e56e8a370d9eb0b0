"""Continuous learning: deploy the current policy, record and relabel its episodes (DAgger with the
scripted expert, or keep the successes), fine-tune from its weights on all data so far, and promote
the result only when it is better on held-out scenes (`scripts/learn_online.py`)."""
