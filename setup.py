from setuptools import setup

with open("lib/nova_libvirt_checks/__init__.py") as init:
    version = next(line.split('"')[1] for line in init if line.startswith("__version__"))

setup(
    name="nova-libvirt-checks",
    version=version,
    description="Nagios/Icinga checks for OpenStack compute nodes: libvirtd, per-instance I/O "
                "named by Nova, cloud capacity from Nova and Placement",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    package_dir={"": "lib"},
    packages=["nova_libvirt_checks"],
    scripts=["checks/check_libvirtd", "checks/check_libvirt_instances",
             "checks/check_nova_hypervisors"],
    install_requires=[
        "nagiosplugin>=1.3",
        "libvirt-python>=7.0",
        "lxml>=4.6",
        "keystoneauth1>=4.0",
        "python-novaclient>=17.0",
    ],
    extras_require={
        # clouds.yaml / secure.yaml for --os-cloud, read by openstacksdk's loader
        "clouds": ["openstacksdk>=1.0"],
        "test": ["pytest>=7", "hypothesis>=6"],
    },
    classifiers=[
        "Environment :: Console",
        "Intended Audience :: System Administrators",
        "Programming Language :: Python :: 3",
        "Topic :: System :: Monitoring",
    ],
)
