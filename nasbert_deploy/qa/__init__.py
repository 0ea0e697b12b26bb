"""Extractive question answering (SQuAD v1.1 / v2.0): data, windows, official metrics, training, export."""
