"""Reports of evaluations: markdown tables and findings, figures, and the HTML page of adversarial examples."""
