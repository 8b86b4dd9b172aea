"""copyguard.train: Stable Diffusion training (lab model, fine-tuning with the memorization filter)."""
