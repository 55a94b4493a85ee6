"""Model quality: held-out loss, the Kneser–Ney baseline, fine-tuning, blends and the quality report."""
