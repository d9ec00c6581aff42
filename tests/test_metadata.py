"""Nova metadata parsing: the variants Nova writes, and what a hostile guest owner may put there."""
import pytest
from hypothesis import given, strategies as st

from nova_libvirt_checks import metadata

NS11 = "http://openstack.org/xmlns/libvirt/nova/1.1"
NS10 = "http://openstack.org/xmlns/libvirt/nova/1.0"
FULL = f"""<nova:instance xmlns:nova="{NS11}">
  <nova:package version="27.1.0"/>
  <nova:name>web-01</nova:name>
  <nova:creationTime>2024-01-01 00:00:00</nova:creationTime>
  <nova:flavor name="m1.small"><nova:memory>2048</nova:memory><nova:vcpus>2</nova:vcpus></nova:flavor>
  <nova:owner><nova:user uuid="u1">alice</nova:user><nova:project uuid="p1">acme</nova:project></nova:owner>
</nova:instance>"""


def test_full_element():
    nova = metadata.parse(FULL)
    assert nova == metadata.NovaInstance("web-01", "acme", "p1", "alice", "u1", "m1.small", 2, 2048,
                                         "2024-01-01 00:00:00", NS11)


def test_namespace_less_element_as_virDomainGetMetadata_returns_it():
    bare = FULL.replace(f' xmlns:nova="{NS11}"', "").replace("nova:", "")
    assert metadata.parse(bare, NS10).name == "web-01"
    assert metadata.parse(bare, NS10).namespace == NS10


def test_missing_owner_and_flavor():
    nova = metadata.parse(f'<instance xmlns="{NS11}"><name>x</name></instance>')
    assert nova.name == "x" and nova.project_name is None and nova.vcpus is None


@pytest.mark.parametrize("text", [
    "", "<instance", f'<instance xmlns="{NS11}"><name>x</name>',          # truncated
    '<instance xmlns="http://example.com/other"><name>x</name></instance>',  # foreign namespace
    f'<instance xmlns="{NS11}"><flavor name="m1"/></instance>',            # no name
    "<instance><name>" + "x" * 70000 + "</name></instance>",              # huge
    "<instance>" + "<a>" * 5000 + "</a>" * 5000 + "<name>x</name></instance>",  # deeply nested
])
def test_malformed_metadata_means_no_nova_name(text):
    assert metadata.parse(text, NS11) is None


def test_entity_expansion_is_not_performed():
    laughs = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
              + "".join(f'<!ENTITY lol{i} "{("&lol%s;" % (i - 1 if i > 1 else "")) * 10}">' for i in range(1, 10))
              + ']><instance><name>&lol9;</name></instance>')
    assert metadata.parse(laughs, NS11) is None


def test_external_entity_is_not_read(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("TOP-SECRET")
    xxe = (f'<?xml version="1.0"?><!DOCTYPE i [<!ENTITY x SYSTEM "file://{secret}">]>'
           f'<instance><name>&x;</name></instance>')
    assert metadata.parse(xxe, NS11) is None        # any DOCTYPE is refused outright


def test_domain_xml_gives_metadata_and_devices():
    xml = f"""<domain type='kvm'><name>instance-1</name><metadata>{FULL}</metadata>
      <devices><disk type='file'><target dev='vda'/></disk><disk type='file'><target dev='vdb'/></disk>
      <interface type='bridge'><target dev='tap1'/></interface></devices></domain>"""
    nova, disks, nics = metadata.describe(xml)
    assert nova.name == "web-01" and disks == ["vda", "vdb"] and nics == ["tap1"]
    assert metadata.describe("<domain") == (None, [], [])


@given(st.text())
def test_any_name_text_is_kept_or_refused_never_raises(name):
    escaped = name.replace("&", "&amp;").replace("<", "&lt;")
    nova = metadata.parse(f'<instance xmlns="{NS11}"><name>{escaped}</name></instance>')
    # XML 1.0 refuses these characters: no name then; otherwise the name as XML reads it
    # (line ends normalised to \n), stripped and clipped
    xml_chars = all(c in "\t\n\r" or 0x20 <= ord(c) <= 0xD7FF or 0xE000 <= ord(c) <= 0xFFFD
                    or 0x10000 <= ord(c) <= 0x10FFFF for c in name)
    read = name.replace("\r\n", "\n").replace("\r", "\n").strip()[:metadata.MAX_FIELD_CHARS]
    if xml_chars and read:
        assert nova is not None and nova.name == read
    else:
        assert nova is None
