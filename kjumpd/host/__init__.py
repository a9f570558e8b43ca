"""Tools that run on the host, never in a boot stage: the initramfs builder and its import check, the demo."""
