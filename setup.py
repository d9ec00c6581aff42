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
    # checks/ stay the executables of a checkout; an install gets console scripts
    entry_points={"console_scripts": [
        "check_libvirtd = nova_libvirt_checks.libvirtd:main",
        "check_libvirt_instances = nova_libvirt_checks.instances:main",
        "check_nova_hypervisors = nova_libvirt_checks.hypervisors:main",
    ]},
    # a compute node needs these only (the libvirt checks)
    install_requires=[
        "nagiosplugin>=1.3",
        "libvirt-python>=7.0",
        "lxml>=4.6",
    ],
    extras_require={
        # check_nova_hypervisors: a keystoneauth1 Session, Nova through python-novaclient,
        # clouds.yaml / secure.yaml for --os-cloud through openstacksdk's loader
        "nova": ["keystoneauth1>=5.0", "python-novaclient>=18.1", "openstacksdk>=0.101"],
        "clouds": ["keystoneauth1>=5.0", "python-novaclient>=18.1", "openstacksdk>=0.101"],
        "test": ["pytest>=7", "hypothesis>=6", "PyYAML"],
    },
    classifiers=[
        "Environment :: Console",
        "Intended Audience :: System Administrators",
        "Programming Language :: Python :: 3",
        "Topic :: System :: Monitoring",
    ],
)
