"""Sound-source localization: the metrics against boxes, the evaluation clean and under attack, its report."""
