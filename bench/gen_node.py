#!/usr/bin/env python3
"""Write a libvirt test-driver node XML with N domains carrying Nova metadata.

    gen_node.py N OUTFILE [NOVA_NS_VERSION]     (1.1, the default, or 1.0)

Served by the real libvirtd through `test+unix:///abs/path/OUTFILE`. Every 10th domain is shut
off; each has two disks and one ethernet interface (so the per-domain path reads 2 blockStats
and 1 interfaceStats). Same shape as the libvirt sandbox's gen_node.py.
"""
import os
import sys
import uuid


def node_xml(n, nsver="1.1"):
    ns = f"http://openstack.org/xmlns/libvirt/nova/{nsver}"
    parts = ["<node>",
             "<cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads>"
             "<active>2</active><mhz>2000</mhz><model>x86_64</model></cpu>",
             "<memory>25165824</memory>"]
    for i in range(n):
        u = uuid.UUID(int=i + 1)
        state = "<test:runstate>5</test:runstate>" if i % 10 == 9 else ""
        parts.append(f"""
<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
  <name>instance-{i:08x}</name>
  <uuid>{u}</uuid>
  <metadata>
    <nova:instance xmlns:nova="{ns}">
      <nova:package version="27.1.0"/>
      <nova:name>vm-{i}</nova:name>
      <nova:creationTime>2024-01-01 00:00:00</nova:creationTime>
      <nova:flavor name="m1.small" id="{i % 3 + 1}">
        <nova:memory>2048</nova:memory><nova:disk>20</nova:disk><nova:swap>0</nova:swap>
        <nova:ephemeral>0</nova:ephemeral><nova:vcpus>{i % 4 + 1}</nova:vcpus>
      </nova:flavor>
      <nova:owner>
        <nova:user uuid="{uuid.UUID(int=1000 + i % 7).hex}">user{i % 7}</nova:user>
        <nova:project uuid="{uuid.UUID(int=2000 + i % 5).hex}">tenant{i % 5}</nova:project>
      </nova:owner>
      <nova:root type="image" uuid="{uuid.UUID(int=3000).hex}"/>
    </nova:instance>
  </metadata>
  <memory>2097152</memory>
  <currentMemory>2097152</currentMemory>
  <vcpu>{i % 4 + 1}</vcpu>
  <os><type>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <source file='/var/lib/nova/instances/{u}/disk'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/var/lib/nova/instances/{u}/disk.eph0'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <interface type='ethernet'>
      <mac address='fa:16:3e:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}'/>
      <target dev='tap{i:08x}'/>
    </interface>
  </devices>
  {state}
</domain>""")
    parts.append("</node>")
    return "\n".join(parts) + "\n"


def write(n, path, nsver="1.1"):
    """Write the node file unless it already holds exactly this content; returns the path."""
    text = node_xml(n, nsver)
    try:
        with open(path) as existing:
            if existing.read() == text:
                return path
    except OSError:
        pass
    tmp = f"{path}.tmp"
    with open(tmp, "w") as out:
        out.write(text)
    os.chmod(tmp, 0o644)       # libvirtd reads it (as root here, but keep it readable)
    os.replace(tmp, path)
    return path


if __name__ == "__main__":
    write(int(sys.argv[1]), os.path.abspath(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "1.1")
