"""Reporting: the analyze command, its tables, figures, HTML report and the paper's references."""
