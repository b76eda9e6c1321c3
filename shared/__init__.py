"""The code the four functions share: decisions live here, never in functions/."""
