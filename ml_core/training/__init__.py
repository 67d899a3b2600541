"""Training stage: configuration, the training loop, losses, augmentation and model variants."""
