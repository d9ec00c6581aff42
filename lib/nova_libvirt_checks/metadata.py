"""Who an instance is, as the cloud knows it: Nova's `<nova:instance>` domain metadata.

Nova writes the element into every domain it creates; Nova 23 and later in namespace
.../nova/1.1, older ones in .../nova/1.0. Owner (user and project) is written only when both
id and name are known, so every field but the name may be missing.

The XML comes from the domain, and a guest's owner controls its name, so parsing is
defensive: no DTD, no entity expansion, no network, a size limit; anything odd means
"no Nova metadata" and the domain is named by its libvirt name.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

NOVA_NAMESPACES = ("http://openstack.org/xmlns/libvirt/nova/1.1",
                   "http://openstack.org/xmlns/libvirt/nova/1.0")
MAX_METADATA_BYTES = 64 * 1024
MAX_FIELD_CHARS = 255


@dataclass(frozen=True)
class NovaInstance:
    name: str
    project_name: Optional[str] = None
    project_uuid: Optional[str] = None
    user_name: Optional[str] = None
    user_uuid: Optional[str] = None
    flavor: Optional[str] = None
    vcpus: Optional[int] = None
    memory_mb: Optional[int] = None
    created: Optional[str] = None
    namespace: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Optional[dict]) -> Optional[NovaInstance]:
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__}) if data else None


_parser = None


def _xml_parser():
    global _parser
    if _parser is None:
        from lxml import etree
        _parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                                  dtd_validation=False, huge_tree=False, remove_comments=True,
                                  remove_pis=True)
    return _parser


def parse(xml_text: Optional[str], namespace: Optional[str] = None) -> Optional[NovaInstance]:
    """A NovaInstance from the text of a `<nova:instance>` element, or None.

    libvirt's virDomainGetMetadata hands the element back without its namespace: then
    `namespace` says which one was asked for.
    """
    from lxml import etree
    if not xml_text or len(xml_text) > MAX_METADATA_BYTES or "<!DOCTYPE" in xml_text.upper():
        return None
    try:
        root = etree.fromstring(xml_text.encode("utf-8", "replace"), _xml_parser())
    except (etree.XMLSyntaxError, ValueError):
        return None
    element_ns = etree.QName(root).namespace
    if element_ns is not None and element_ns not in NOVA_NAMESPACES:
        return None
    if etree.QName(root).localname != "instance":
        return None
    prefix = f"{{{element_ns}}}" if element_ns else ""
    namespace = element_ns or namespace

    def find(path):
        return root.find(path.replace("nova:", prefix))

    def text(path):
        element = find(path)
        if element is None or element.text is None:
            return None
        return element.text.strip()[:MAX_FIELD_CHARS] or None

    def attr(path, name):
        element = find(path)
        value = None if element is None else element.get(name)
        return value[:MAX_FIELD_CHARS] if value else None

    def number(path):
        value = text(path)
        return int(value) if value and value.isascii() and value.isdigit() and len(value) < 10 else None

    name = text("nova:name")
    if name is None:
        return None
    return NovaInstance(
        name=name,
        project_name=text("nova:owner/nova:project"),
        project_uuid=attr("nova:owner/nova:project", "uuid"),
        user_name=text("nova:owner/nova:user"),
        user_uuid=attr("nova:owner/nova:user", "uuid"),
        flavor=attr("nova:flavor", "name"),
        vcpus=number("nova:flavor/nova:vcpus"),
        memory_mb=number("nova:flavor/nova:memory"),
        created=text("nova:creationTime"),
        namespace=namespace,
    )


def read(libvirt: Any, dom: Any) -> Optional[NovaInstance]:
    """The domain's NovaInstance, or None when it has no (usable) Nova metadata.

    Raises libvirtError for anything but "no such metadata" (e.g. the domain vanished).
    """
    for namespace in NOVA_NAMESPACES:
        try:
            xml_text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, namespace, 0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
                continue
            raise
        return parse(xml_text, namespace)
    return None


MAX_DOMAIN_XML_BYTES = 4 * 1024 * 1024


def describe(xml_text: Optional[str]) -> tuple[Optional[NovaInstance], list[str], list[str]]:
    """From a domain's XML (virDomainGetXMLDesc): its NovaInstance or None, and the target
    names of its disks and network interfaces (for drivers without bulk stats)."""
    from lxml import etree
    if not xml_text or len(xml_text) > MAX_DOMAIN_XML_BYTES:
        return None, [], []
    try:
        root = etree.fromstring(xml_text.encode("utf-8", "replace"), _xml_parser())
    except (etree.XMLSyntaxError, ValueError):
        return None, [], []
    nova = None
    for namespace in NOVA_NAMESPACES:
        element = root.find(f"metadata/{{{namespace}}}instance")
        if element is not None:
            text = etree.tostring(element, encoding="unicode")
            nova = parse(text) if len(text) <= MAX_METADATA_BYTES else None
            break
    disks = [t.get("dev") for t in root.iterfind("devices/disk/target") if t.get("dev")]
    nics = [t.get("dev") for t in root.iterfind("devices/interface/target") if t.get("dev")]
    return nova, disks, nics
