"""What every stage shares: diagnostics and their spans, the symbolic size algebra, the checked
model (the front end's output and the back end's input), and the user's directories."""
