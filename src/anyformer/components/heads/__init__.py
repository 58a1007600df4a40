"""Heads (slot ``head``): what turns the final hidden states into the model's outputs."""
