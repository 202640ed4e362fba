"""dfir-ar: active response and forensic evidence in the OSSEC/Wazuh tradition."""

__version__ = "0.1.0"
