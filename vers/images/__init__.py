"""Guest images vers boots: the default busybox guest (``guest``) and the scripts baked into every
guest (``guestfs``: initramfs /init, guest init, guest agent). See docs/guests.md."""
