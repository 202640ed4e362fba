"""firewall-drop benchmark (see run.py)."""
