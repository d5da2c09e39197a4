"""falcon-desktop: QLoRA fine-tuning of causal LMs on SQuAD on one consumer GPU."""

__version__ = "0.1.0"
