"""Training: supernet, distillation, fine-tuning."""
