"""Training-time defences: differentially private training (DP-SGD) and its empirical audit."""
