"""unsee attacking its own results: relearning, held-out images and paraphrases, adversarial images,
quantization and membership inference, each read against the retrained reference where one exists."""
