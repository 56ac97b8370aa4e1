"""Generated-image metadata: an XMP packet that says the image was made by a trained model.

Google Merchant Center requires every AI-generated product image to carry the IPTC
``DigitalSourceType`` ``trainedAlgorithmicMedia`` in the file, and other channels read it too.
The packet also names the models of the chain (IPTC 2025.1's ``AISystemUsed`` and
``AISystemVersionUsed`` for the first model, all of them under the factory's own namespace) and
the run that rendered it. It is written where each format keeps XMP: JPEG's APP1 segment and
WebP's ``XMP `` chunk through Pillow's ``xmp=`` save argument, PNG's ``iTXt`` chunk with the
keyword ``XML:com.adobe.xmp``. The bytes are the object's bytes, so the metadata travels through
any store unchanged (tests read it back from the S3 server).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape, quoteattr

DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
IPTC_EXT_NS = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
FACTORY_NS = "urn:asset-factory:xmp:1.0/"
PNG_XMP_KEY = "XML:com.adobe.xmp"
CREATOR_TOOL = "asset-factory"


@dataclass(frozen=True)
class ModelUse:
    """One stage of the chain as the metadata names it."""

    stage: str
    model: str
    source: str
    revision: str

    def text(self) -> str:
        return f"{self.stage}={self.model} ({self.source}@{self.revision})"


@dataclass(frozen=True)
class Provenance:
    """What an image's metadata says about how it was made.

    Attributes:
        run_id: the run that rendered the image.
        job: the job's name.
        models: every stage of the chain, in order; the first is the AI system that made it.
    """

    run_id: str
    job: str
    models: tuple[ModelUse, ...]

    def packet(self) -> bytes:
        """The XMP packet (UTF-8), the same bytes for the same provenance."""
        first = self.models[0] if self.models else ModelUse("", "", "", "")
        items = "".join(f"<rdf:li>{escape(m.text())}</rdf:li>" for m in self.models)
        text = (
            '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
            '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            '<rdf:Description rdf:about=""'
            f' xmlns:Iptc4xmpExt="{IPTC_EXT_NS}"'
            ' xmlns:xmp="http://ns.adobe.com/xap/1.0/"'
            f' xmlns:factory="{FACTORY_NS}"'
            f' Iptc4xmpExt:DigitalSourceType="{DIGITAL_SOURCE_TYPE}"'
            f' Iptc4xmpExt:AISystemUsed={quoteattr(first.source or first.model)}'
            f' Iptc4xmpExt:AISystemVersionUsed={quoteattr(first.revision)}'
            f' xmp:CreatorTool="{CREATOR_TOOL}"'
            f' factory:RunId={quoteattr(self.run_id)}'
            f' factory:Job={quoteattr(self.job)}>'
            f'<factory:Models><rdf:Seq>{items}</rdf:Seq></factory:Models>'
            '</rdf:Description></rdf:RDF></x:xmpmeta>'
            '<?xpacket end="r"?>')
        return text.encode("utf-8")


def save_options(fmt: str, packet: bytes) -> dict[str, Any]:
    """Pillow ``save`` arguments that embed ``packet`` in a ``png``, ``webp`` or ``jpeg`` file."""
    if fmt in ("jpeg", "webp"):
        return {"xmp": packet}
    if fmt == "png":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_itxt(PNG_XMP_KEY, packet.decode("utf-8"))
        return {"pnginfo": info}
    raise ValueError(f"no XMP carrier for format '{fmt}'")


def carries_source_type(data: bytes) -> bool:
    """Whether encoded bytes hold an XMP packet declaring ``trainedAlgorithmicMedia``.

    A byte search, not a parse: the sink runs it on every asset. Tests parse the packet.
    """
    start = data.find(b"<x:xmpmeta")
    return start >= 0 and data.find(DIGITAL_SOURCE_TYPE.encode(), start) > start
