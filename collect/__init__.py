"""Data collection: campaigns (`collect.campaign`), quality filters, reviews and the dataset build."""
