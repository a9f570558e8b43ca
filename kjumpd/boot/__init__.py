"""The programs that run in the boot stages, each in an initramfs without the daemon side.

* ``save``: B's program, saves A's memory to the image target (``kjump.role=save``);
* ``restore``: R's program, writes the image back and jumps to A (``kjump.role=restore``);
* ``resume``: C's check, early in an ordinary boot (``kjumpctl resume-check``);
* ``common``: their shared start-up and console progress;
* ``init.sh`` and ``jumpback.py``: B/R's ``/init`` and its fallback jump back,
  installed as files by ``kjumpd.host.initramfs``.

The role names on the kernel command line are the module names here.
"""
