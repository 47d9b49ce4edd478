"""Flow matching: the training objective, time schedules and samplers."""
