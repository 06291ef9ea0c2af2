"""continual_lm: continual learning of language models with parameter-efficient fine-tuning."""
__version__ = "0.1.0"
