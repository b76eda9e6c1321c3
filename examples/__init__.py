"""Example components for the demo (`make run`)."""
