"""kjumpd: Linux hibernation through kexec jump."""

__version__ = "0.1.0"
