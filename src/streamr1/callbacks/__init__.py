"""Lightning callbacks: the loss-weighting extension point, Stream-R1's weightings, EMA and logging."""
