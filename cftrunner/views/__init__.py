"""What people see: status, progress, reports, the plan of a run, and the live display."""
