"""Running the workflow's chunk jobs on AWS Batch: names, submission, status, publication."""
