"""Fine-tuning: training targets and weight maps, augmentation, the training run."""
