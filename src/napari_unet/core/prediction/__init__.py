"""Prediction: tiles of the image, probabilities, and the cells split from them."""
