"""nova-libvirt-checks: Nagios/Icinga checks for OpenStack compute nodes."""
__version__ = "0.1.0"
