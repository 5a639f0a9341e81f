"""nbconvert preprocessors for the pages made from a student's notebook: they run nothing of the student's
and, in feedback, quote no hidden test.

A student's notebook is hostile input. nbgrader renders it twice as HTML: in formgrader, for the instructor
(nbgrader's formgrade template, nbconvert's sanitize_html off), and in the feedback pages (nbgrader's
feedback template). Both templates render markdown cells without nbconvert's clean_html, so that option
alone would leave markdown cells as written.

MakeInert rewrites the notebook before the template sees it: markdown (cells and outputs) is rendered here
and sanitized with bleach (nbconvert's own sanitizer library) against an allowlist of formatting tags,
attributes and styles; text/html outputs are sanitized the same way; JavaScript and widget outputs are
replaced by a short note; SVG is shown as an image (which runs no script); any other type is dropped.
Math, tables, code, PNG/JPEG figures and ordinary formatting stay. Rejected markup is shown escaped, as text.

Math ($...$, $$...$$, \\begin{...}...\\end{...}, and text/latex outputs) is converted to MathML here, when the
page is made (latex2mathml), so that the pages need no MathJax (NoMathJax takes it out of nbgrader's templates):
no script and no network, and browsers typeset MathML themselves. The MathML, the converter's as well as any that a
student wrote, passes the same allowlist: MathML Core's presentation elements with their layout attributes, and the
TeX source as a plain-text annotation; no links (href), no maction, no annotation-xml, no mglyph. TeX that does not
convert cleanly is shown as written, as code.

RedactHiddenTests removes from every output any line of a hidden test (the notebook's own test cells and
the source notebook in solutions/): a student's cell can print its own .ipynb, IPython's history, or every
cell's raw source from a post_run_cell hook. It must run before ClearSourceHiddenTests, which empties the
hidden blocks it reads. Lines are compared on their letters and digits only (case folded, after removing
ANSI colours, HTML tags and entities, and \\uXXXX escapes), so that JSON-, repr- and HTML-escaped copies
match too. A student who encodes the text (base64, rot13, one character a line) is not caught: redaction
is a net for plain leaks, not a barrier.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import re
from pathlib import Path

import bleach
import latex2mathml.converter
import nbformat
from bleach.css_sanitizer import CSSSanitizer
from jinja2 import DictLoader
from nbconvert.exporters import TemplateExporter
from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath
from nbconvert.preprocessors import Preprocessor
from nbformat.notebooknode import NotebookNode
from traitlets import Bool, Int

HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"  # nbgrader's ClearHiddenTests defaults

TAGS = frozenset("""a abbr b blockquote br caption center cite code col colgroup dd del details div dl dt em figcaption figure
    h1 h2 h3 h4 h5 h6 hr i img ins kbd li mark ol p pre q s samp small span strike strong sub summary sup table tbody td
    tfoot th thead tr tt u ul var""".split())
# MathML Core's presentation elements that latex2mathml writes (menclose too: browsers without it show the content),
# and semantics with a plain-text annotation for the TeX source. Never maction, annotation-xml, mglyph or links.
MATHML_TAGS = frozenset("""math semantics annotation mrow mi mn mo ms mtext mspace msub msup msubsup munder mover munderover
    mfrac msqrt mroot mtable mtr mtd mstyle mpadded mphantom menclose merror""".split())
TAGS = TAGS | MATHML_TAGS
COMMON_ATTRIBUTES = frozenset({"class", "title", "style", "align", "lang", "dir"})
TAG_ATTRIBUTES = {
    "a": {"href"},
    "img": {"src", "alt", "width", "height"},
    "ol": {"start", "type"},
    "table": {"border", "width"},
    "td": {"colspan", "rowspan", "width", "valign"},
    "th": {"colspan", "rowspan", "width", "valign", "scope"},
    "col": {"span", "width"},
    "colgroup": {"span", "width"},
    "details": {"open"},
}
PROTOCOLS = frozenset({"http", "https", "mailto", "data"})  # data: only for images, see allowed_attribute
IMAGE_DATA_URL = re.compile(r"data:image/(png|jpeg|gif|webp|svg\+xml)[;,]")
# Classes that nbconvert's markdown rendering, pygments and pandas use; none of formgrader's own (score, comment...).
SAFE_CLASS = re.compile(r"[a-z]{1,3}[0-9]?|highlight|hl-[\w+-]+|language-[\w+-]+|dataframe|anchor-link")
CSS_PROPERTIES = frozenset("""color background-color text-align vertical-align font-weight font-style font-size font-family
    text-decoration white-space border border-color border-style border-width border-collapse border-spacing
    border-top border-bottom border-left border-right padding padding-top padding-bottom padding-left padding-right
    width max-width min-width height""".split())
UNSAFE_CSS_VALUE = re.compile(r"url\s*\(|expression|image-set|\\|@|<|>", re.IGNORECASE)
STYLE_ELEMENT = re.compile(r"<style\b.*?(</style\s*>|$)", re.IGNORECASE | re.DOTALL)  # CSS text shown escaped helps nobody

SCRIPTED = {  # output types that run code in the page: replaced by a note
    "application/javascript": "JavaScript output",
    "text/javascript": "JavaScript output",
    "application/vnd.jupyter.widget-view+json": "widget",
    "application/vnd.jupyter.widget-state+json": "widget",
}
KEPT = frozenset({"text/plain", "text/latex", "image/png", "image/jpeg", "application/json"})
SHOWN = frozenset({"text/plain", "text/latex", "image/png", "image/jpeg", "text/html", "text/markdown"})
IMAGE_METADATA = frozenset({"width", "height"})
SAFE_GRADE_ID = re.compile(r"[A-Za-z0-9_.-]+")


class SafeCSS(CSSSanitizer):
    """bleach's CSS sanitizer, also refusing values that load anything or escape the parser."""

    def sanitize_css(self, style: str) -> str:
        """Keep the allowed declarations whose values fetch nothing."""
        return "; ".join(part for part in super().sanitize_css(style).split(";") if part.strip() and not UNSAFE_CSS_VALUE.search(part))


CSS = SafeCSS(allowed_css_properties=CSS_PROPERTIES, allowed_svg_properties=frozenset())


# --- math: TeX to MathML --------------------------------------------------------------------------------

TEX_ENCODING = "application/x-tex"  # the annotation that keeps each formula's TeX source
MAX_TEX = 10_000  # characters in one formula: a longer one is shown as written
MAX_MATH_DEPTH = 80  # nested MathML elements
MATHML_VALUES = {name: re.compile(pattern) for name, pattern in {
    "display": "block|inline",
    "mathvariant": "normal|bold|italic|bold-italic|double-struck|script|bold-script|fraktur|bold-fraktur|sans-serif"
                   "|bold-sans-serif|sans-serif-italic|sans-serif-bold-italic|monospace",
    "displaystyle": "true|false", "stretchy": "true|false", "fence": "true|false", "separator": "true|false",
    "largeop": "true|false", "movablelimits": "true|false", "symmetric": "true|false", "accent": "true|false",
    "accentunder": "true|false",
    "form": "prefix|infix|postfix",
    "scriptlevel": r"[+-]?\d",
    "mathcolor": r"#[0-9a-fA-F]{3,8}|[a-zA-Z]{1,20}", "mathbackground": r"#[0-9a-fA-F]{3,8}|[a-zA-Z]{1,20}",
    "columnalign": r"(left|center|right)( (left|center|right)){0,50}",
    "rowalign": r"(top|bottom|center|baseline|axis)( (top|bottom|center|baseline|axis)){0,50}",
    "columnlines": r"(none|solid|dashed)( (none|solid|dashed)){0,50}",
    "rowlines": r"(none|solid|dashed)( (none|solid|dashed)){0,50}",
    "frame": "none|solid|dashed",
    "notation": r"(box|roundedbox|circle|left|right|top|bottom|updiagonalstrike|downdiagonalstrike|verticalstrike"
                r"|horizontalstrike|longdiv|actuarial|madruwb)( |$)+",
}.items()}
# Lengths take room in the layout, but for the ones that paint content away from its box: voffset, and mpadded's
# lspace, height and depth (a zero-height mpadded holding a tall table would cover the page above). Those are refused.
MATHML_LENGTHS = frozenset({"width", "height", "depth", "minsize", "maxsize", "linethickness", "lspace", "rspace",
                            "columnspacing", "rowspacing"})
SPACES = frozenset({"lspace", "rspace"})  # an operator's spacing: at most 1em
LENGTH = re.compile(r"(\d{1,3}(?:\.\d{0,4})?|\.\d{1,4})(em|ex|pt|px)?")  # not negative, nor relative (+1em)
# Font changes that browsers' MathML Core ignores as mathvariant, written as CSS.
VARIANT_CSS = {"bold": "font-weight: bold", "italic": "font-style: italic", "bold-italic": "font-weight: bold; font-style: italic",
               "monospace": "font-family: monospace", "sans-serif": "font-family: sans-serif",
               "bold-sans-serif": "font-weight: bold; font-family: sans-serif"}
# TeX environments that latex2mathml lacks, as ones it has (aligned is align*'s layout without equation numbers).
ENVIRONMENTS = {r"\begin{aligned}": r"\begin{align*}", r"\end{aligned}": r"\end{align*}",
                r"\begin{gathered}": r"\begin{array}{c}", r"\end{gathered}": r"\end{array}",
                r"\begin{gather}": r"\begin{array}{c}", r"\begin{gather*}": r"\begin{array}{c}",
                r"\end{gather}": r"\end{array}", r"\end{gather*}": r"\end{array}",
                r"\begin{equation}": "", r"\begin{equation*}": "", r"\end{equation}": "", r"\end{equation*}": ""}
ENVIRONMENT = re.compile("|".join(map(re.escape, sorted(ENVIRONMENTS, key=len, reverse=True))))
COMMANDS = {"arg": r"\operatorname{arg}", "nolimits": ""}  # the same for commands
COMMAND = re.compile(r"\\(%s)(?![A-Za-z])" % "|".join(COMMANDS))
ROW_SPACING = re.compile(r"\\\\\s*\[\s*[-+]?(\d+\.?\d*|\.\d+)\s*(em|ex|pt|mm|cm|in|mu|px|bp|pc)\s*\]")  # \\[1ex]: a plain \\ here
NUMBER = re.compile(r"[0-9.,\s]*")
FUNCTION_NAME = re.compile(r"[A-Za-z]{2,}")
SCRIPTED_TAGS = frozenset({"msub", "msup", "msubsup", "munder", "mover", "munderover"})
ROW_TAGS = frozenset({"math", "mrow", "mstyle", "mtd", "mpadded", "mphantom", "menclose", "msqrt", "merror"})  # a sequence
TEX_COMMAND = re.compile(r"\\[A-Za-z]")  # a command latex2mathml did not know: it writes it out as text
TEXT_ESCAPE = re.compile(r"\\([_&%$#{} ])")  # \_ and the like in \text{...}, which latex2mathml leaves as they are
STRAY_AMPERSAND = re.compile(r"&(?!#x[0-9a-fA-F]+;|#[0-9]+;)")  # an alignment & outside a table


class UnconvertedMath(ValueError):
    """TeX that latex2mathml did not turn into clean MathML."""


def short_length(name: str, value: str) -> bool:
    """Whether a MathML length is one that TeX layout needs: not negative, not huge."""
    match = LENGTH.fullmatch(value)
    if not match:
        return False
    number, unit = match.groups()
    return (unit is not None or float(number) == 0) and float(number) <= (1 if name in SPACES else 30)


def allowed_mathml_attribute(tag: str, name: str, value: str) -> bool:
    """Whether an attribute of a MathML element may stay: layout attributes with plain values, style (sanitized), and
    the TeX annotation's encoding. No href, xlink:href, definitionURL, event handler, actiontype or src, and nothing
    that paints content over the page's own (voffset, mpadded's shifts)."""
    value = value.strip()
    if name == "style":
        return True  # bleach's CSS sanitizer keeps only the allowed properties
    if name == "encoding":
        return tag == "annotation" and value == TEX_ENCODING
    if name in MATHML_LENGTHS:
        if (tag == "mpadded" and name != "width") or (name in SPACES and tag != "mo"):
            return False
        return bool(value) and all(short_length(name, part) for part in value.split())
    pattern = MATHML_VALUES.get(name)
    return pattern is not None and bool(pattern.fullmatch(value))


def math_text(tag: str, raw: str | None) -> str:
    """The escaped text of a MathML element that latex2mathml made (its text holds character references, unescaped)."""
    if not raw:
        return ""
    if tag == "mtext":
        raw = TEXT_ESCAPE.sub(r"\1", raw)
    elif STRAY_AMPERSAND.search(raw):
        raise UnconvertedMath("an & outside a table")
    if TEX_COMMAND.search(raw):
        raise UnconvertedMath(f"an unknown command in {raw!r}")
    text = html.unescape(raw)
    if tag == "mn" and not NUMBER.fullmatch(text):
        raise UnconvertedMath(f"{text!r} as a number")  # e.g. the 1.5ex of \\[1.5ex], an argument it did not know
    return html.escape(text, quote=False)


def is_function_name(element) -> bool:
    """Whether an element is a function or operator name such as exp, tanh, max or \\operatorname{softmax}, alone or
    with scripts (latex2mathml writes them as <mi> or <mo> and leaves out the thin space TeX puts after them)."""
    if element.tag in SCRIPTED_TAGS and len(element):
        element = element[0]
    text = html.unescape(element.text or "")
    return element.tag in ("mi", "mo") and bool(FUNCTION_NAME.fullmatch(text)) and text != "mod"  # \bmod is spaced as it is


def children_markup(element, depth: int) -> str:
    """The markup of an element's content: its text, its children and their tails, with TeX's thin space after a
    function name that an operand follows."""
    parts = [math_text(element.tag, element.text)]
    children = list(element)
    for index, child in enumerate(children):
        parts.append(mathml_markup(child, depth + 1))
        following = children[index + 1] if index + 1 < len(children) else None
        if (element.tag in ROW_TAGS and is_function_name(child) and following is not None
                and following.tag not in ("mo", "mspace")):
            parts.append('<mspace width="0.1667em"></mspace>')
        parts.append(math_text(element.tag, child.tail))
    return "".join(parts)


def mathml_markup(element, depth: int) -> str:
    """The markup of one element of latex2mathml's tree, with allowed elements and attributes only, and the layout
    that browsers' MathML Core does not take from legacy attributes written as CSS."""
    if element.tag not in MATHML_TAGS or element.tag in ("math", "semantics", "annotation") or depth > MAX_MATH_DEPTH:
        raise UnconvertedMath(f"<{element.tag}> at depth {depth}")
    attributes = {name: value for name, value in element.attrib.items() if allowed_mathml_attribute(element.tag, name, value)}
    if element.tag == "mpadded" and any(element.get(name, "").startswith(("+", "-")) for name in ("width", "height", "depth")):
        attributes = {}  # sizes relative to the content (\xrightarrow's label): without them the shifts misplace it
    if element.tag == "mo" and is_function_name(element):
        attributes.setdefault("lspace", "0")
        attributes.setdefault("rspace", "0")  # an operator name is spaced like TeX's, by children_markup
    css = []
    if attributes.get("mathvariant") in VARIANT_CSS:
        css.append(VARIANT_CSS[attributes.pop("mathvariant")])
    if element.tag == "mtd" and attributes.get("columnalign") in ("left", "right", "center"):
        align = attributes["columnalign"]
        css.append(f"text-align: {align}" + ("" if align == "center" else f"; padding-{'left' if align == 'left' else 'right'}: 0"))
    if css:
        attributes["style"] = "; ".join(css)
    opening = element.tag + "".join(f' {name}="{html.escape(value)}"' for name, value in attributes.items())
    return f"<{opening}>{children_markup(element, depth)}</{element.tag}>"


def tex_to_mathml(tex: str, display: bool) -> str:
    """MathML for one formula (TeX without its delimiters), with its TeX as an annotation; TeX that does not convert
    cleanly comes back as written, escaped, as code."""
    try:
        if len(tex) > MAX_TEX:
            raise UnconvertedMath("too long")
        written = COMMAND.sub(lambda m: COMMANDS[m[1]], ENVIRONMENT.sub(lambda m: ENVIRONMENTS[m[0]], tex))
        written = ROW_SPACING.sub(r"\\\\", written)
        root = latex2mathml.converter.convert_to_element(written, display="block" if display else "inline")
        if not len(root):
            raise UnconvertedMath("no formula")
        content = children_markup(root, 0)
    except Exception:  # latex2mathml's own errors, RecursionError on deep nesting, UnconvertedMath
        delimiter = "$$" if display else "$"
        return f'<code title="TeX that could not be typeset">{html.escape(delimiter + tex + delimiter, quote=False)}</code>'
    if len(root) > 1:
        content = f"<mrow>{content}</mrow>"
    annotation = f'<annotation encoding="{TEX_ENCODING}">{html.escape(tex.strip(), quote=False)}</annotation>'
    opening = '<math display="block">' if display else "<math>"
    return f"{opening}<semantics>{content}{annotation}</semantics></math>"


class MathMLRenderer(IPythonRenderer):
    """nbconvert's markdown renderer, writing math as MathML rather than as TeX for MathJax (code is left as it is)."""

    def block_math(self, body: str) -> str:
        return tex_to_mathml(body, display=True)

    def inline_math(self, body: str) -> str:
        return tex_to_mathml(body, display=False)

    def latex_environment(self, name: str, body: str) -> str:
        return tex_to_mathml(f"\\begin{{{name}}}{body}\\end{{{name}}}", display=True)


def allowed_attribute(tag: str, name: str, value: str) -> bool:
    """Whether an attribute may stay (bleach still checks the protocol of href and src)."""
    if tag in MATHML_TAGS:
        return allowed_mathml_attribute(tag, name, value)
    if name not in COMMON_ATTRIBUTES and name not in TAG_ATTRIBUTES.get(tag, ()):
        return False
    if name == "class":
        return all(SAFE_CLASS.fullmatch(token) for token in value.split())
    if name in ("href", "src"):
        plain = re.sub(r"[`\x00-\x20\x7f-\xa0\s]+", "", html.unescape(value)).lower()
        if name == "href":  # a relative link would open a file of the student's folder, served by formgrader as a page
            return plain.startswith(("http://", "https://", "mailto:", "#"))
        return not plain.startswith("data:") or (tag == "img" and bool(IMAGE_DATA_URL.match(plain)))
    return True


def clean_html(markup: str) -> str:
    """Sanitized HTML: allowlisted tags, attributes, URLs and styles; anything else escaped as text."""
    markup = STYLE_ELEMENT.sub("", markup)
    return bleach.clean(markup, tags=TAGS, attributes=allowed_attribute, protocols=PROTOCOLS, css_sanitizer=CSS,
                        strip=False, strip_comments=True)


def render_markdown(source: str, attachments: dict | None = None) -> str:
    """Markdown rendered to HTML as nbconvert renders it, math as MathML, attachments embedded."""
    renderer = MathMLRenderer(escape=False, attachments=attachments or {}, exclude_anchor_links=True)
    try:
        return MarkdownWithMath(renderer=renderer).render(source)
    except Exception:  # e.g. a missing attachment: show the text as written
        return f"<pre>{html.escape(source, quote=False)}</pre>"


def one_line(markup: str) -> str:
    """`markup` on one line (newlines as character references), so that markdown takes it as one HTML block."""
    return markup.replace("\r", "&#13;").replace("\n", "&#10;")


def inert_markdown(source: str, attachments: dict | None = None) -> str:
    """Markdown whose rendering is the sanitized HTML of `source`: one HTML block that markdown passes through."""
    return _made_inert(source, attachments) if attachments else _remembered_inert(source)


@functools.lru_cache(maxsize=4096)
def _remembered_inert(source: str) -> str:
    """inert_markdown of a cell without attachments, made once per process: the course's markdown is the same in every
    submission, and sanitizing takes bleach a tenth of a second a cell."""
    return _made_inert(source, None)


def _made_inert(source: str, attachments: dict | None) -> str:
    block = '<div class="inert-markdown">' + one_line(clean_html(render_markdown(source, attachments))) + "</div>"
    if render_markdown(block).strip() != block:  # the template renders it once more: it must come out unchanged
        block = '<pre class="inert-markdown">' + one_line(html.escape(source, quote=False)) + "</pre>"
    return block


def as_text(value) -> str:
    """A mime bundle value as one string (nbformat allows a list of lines)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(part, str) for part in value):
        return "".join(value)
    return json.dumps(value)


def svg_as_image(svg: str) -> str:
    """HTML showing an SVG as an image: browsers run no script and fetch nothing for an SVG in <img>."""
    encoded = base64.b64encode(svg.encode()).decode()
    return f'<img alt="an SVG figure" src="data:image/svg+xml;base64,{encoded}">'


def image_metadata(metadata: dict) -> NotebookNode:
    """An output's metadata reduced to the sizes of its PNG and JPEG images (no file names, no isolated frames, no alt)."""
    sizes = NotebookNode()
    for mime in ("image/png", "image/jpeg"):
        if isinstance(metadata.get(mime), dict):
            sizes[mime] = NotebookNode({key: value for key, value in metadata[mime].items()
                                        if key in IMAGE_METADATA and type(value) is int})
    return sizes


def note(output: NotebookNode, text: str) -> NotebookNode:
    """`output` showing only a short note in place of its data."""
    output["data"] = NotebookNode({"text/plain": f"[{text}]"})
    output["metadata"] = NotebookNode()
    return output


def inert_output(output: NotebookNode) -> NotebookNode:
    """A display_data or execute_result output with only inert representations; streams and errors as they are."""
    if output.get("output_type") not in ("display_data", "execute_result"):
        return output  # the template escapes stream text and tracebacks
    data = output.get("data") or {}
    scripted = sorted({label for mime, label in SCRIPTED.items() if mime in data})
    if scripted:
        return note(output, f"not shown here: a {' and a '.join(scripted)}")
    kept = NotebookNode()
    for mime, value in data.items():
        if mime in KEPT and (isinstance(value, str) or mime == "application/json"):
            kept[mime] = value
            if mime == "text/latex" and not {"text/html", "text/markdown"} & set(data):
                kept["text/html"] = clean_html(render_markdown(value))  # as MathML: shown as text/latex, it is TeX
        elif mime == "text/html":
            kept[mime] = clean_html(as_text(value))
        elif mime == "text/markdown":
            kept[mime] = inert_markdown(as_text(value))
    if "image/svg+xml" in data and "text/html" not in kept:
        kept["text/html"] = svg_as_image(as_text(data["image/svg+xml"]))
    dropped = sorted(set(data) - set(kept) - {"image/svg+xml"})
    if not SHOWN & set(kept):
        return note(output, f"not shown here: an output of type {', '.join(dropped) or 'none'}")
    output["data"] = kept
    output["metadata"] = image_metadata(output.get("metadata") or {})
    return output


class MakeInert(Preprocessor):
    """Make a notebook's markdown, raw cells and outputs inert for an HTML page (see the module's docstring)."""

    enabled = Bool(True).tag(config=True)

    def preprocess(self, nb: NotebookNode, resources: dict) -> tuple[NotebookNode, dict]:
        """Drop saved widget state (the page would render it) and make every cell inert."""
        nb.metadata.pop("widgets", None)
        return super().preprocess(nb, resources)

    def preprocess_cell(self, cell: NotebookNode, resources: dict, index: int) -> tuple[NotebookNode, dict]:
        """Sanitize one cell: markdown rendered and cleaned, raw source cleaned, outputs made inert."""
        if cell.cell_type == "markdown":
            cell.source = inert_markdown(cell.source, cell.get("attachments"))
            cell.pop("attachments", None)  # embedded by now
        elif cell.cell_type == "raw":
            cell.source = clean_html(cell.source)
        elif cell.cell_type == "code":
            cell.outputs = [inert_output(output) for output in cell.get("outputs", [])]
        info = cell.metadata.get("nbgrader")
        if isinstance(info, dict) and not SAFE_GRADE_ID.fullmatch(str(info.get("grade_id", "x"))):
            del cell.metadata["nbgrader"]  # the templates write grade_id into the page unescaped
        return cell, resources


# nbconvert's macro that nbgrader's templates (formgrade, feedback) call in the page's head: it loads MathJax from a CDN.
NO_MATHJAX = DictLoader({"mathjax.html.j2": '{%- macro mathjax(url="") -%}{%- endmacro %}'})


class NoMathJax(Preprocessor):
    """Takes MathJax out of the pages of the exporter it is registered with (the math is MathML, see MakeInert).

    formgrader sets its exporter's template folders itself, over nbgrader_config.py, so a template of ours cannot be
    put before nbconvert's there: this gives the exporter, as it is made, a template loader that is searched first and
    whose mathjax macro writes nothing. It changes no notebook."""

    enabled = Bool(True).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        exporter = self.parent
        if isinstance(exporter, TemplateExporter) and NO_MATHJAX not in exporter.extra_loaders:
            exporter.extra_loaders = [NO_MATHJAX, *exporter.extra_loaders]

    def preprocess(self, nb: NotebookNode, resources: dict) -> tuple[NotebookNode, dict]:
        return nb, resources


# --- hidden tests -------------------------------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
TAG = re.compile(r"<[^>]*>")
UNICODE_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")
NOT_ALNUM = re.compile(r"[\W_]+")
REDACTED = "[hidden test code removed]"
WHOLE_OUTPUT_REDACTED = "[this output quoted hidden test code and was removed]"
TEXT_MIMES = ("text/plain", "text/latex")  # redacted line by line
MARKUP_MIMES = ("text/html", "text/markdown", "image/svg+xml", "application/json")  # dropped if they quote a hidden test


def canonical(text: str) -> str:
    """The letters and digits of `text`, case folded, after undoing the usual escapes (ANSI, HTML, JSON)."""
    text = UNICODE_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), ANSI.sub("", text))
    return NOT_ALNUM.sub("", html.unescape(text)).casefold()


def markup_text(markup: str) -> str:
    """The text of HTML-ish markup (tags removed), for comparing with hidden test lines."""
    return TAG.sub("", markup)


def split_hidden(source: str) -> tuple[list[str], list[str]]:
    """(lines inside hidden-test blocks, lines outside them) of one cell's source."""
    hidden, visible, inside = [], [], False
    for line in source.splitlines():
        if line.strip() == HIDDEN_BEGIN:
            inside = True
        elif line.strip() == HIDDEN_END:
            inside = False
        else:
            (hidden if inside else visible).append(line)
    return hidden, visible


def is_test_cell(cell: NotebookNode) -> bool:
    """A cell nbgrader grades automatically: the only kind that holds hidden tests."""
    info = cell.metadata.get("nbgrader", {})
    return cell.cell_type == "code" and bool(info.get("grade")) and not info.get("solution")


class HiddenLines:
    """The hidden test lines of a notebook, and how to find them in a piece of output."""

    def __init__(self, test_sources: list[str], min_length: int):
        hidden, visible = set(), set()
        for source in test_sources:
            inside, outside = split_hidden(source)
            hidden.update(canonical(line) for line in inside)
            visible.update(canonical(line) for line in outside)
        hidden -= visible | {""}  # a line that the student can read anyway needs no hiding
        self.long = sorted({line for line in hidden if len(line) >= min_length} | {canonical(HIDDEN_BEGIN), canonical(HIDDEN_END)},
                           key=len, reverse=True)
        self.short = hidden - set(self.long)
        self.pattern = re.compile("|".join(map(re.escape, self.long)))

    def found_in(self, text: str) -> bool:
        """Whether `text` holds a (long) hidden line anywhere, even split over several lines."""
        return bool(self.pattern.search(canonical(text)))

    def is_short_line(self, line: str) -> bool:
        """Whether `line` is exactly one of the short hidden lines (as written, or as a JSON source line ending in \\n)."""
        text = canonical(line)
        return text in self.short or (text.endswith("n") and text[:-1] in self.short)

    def redact(self, text: str) -> tuple[str, bool]:
        """(`text` with its hidden lines replaced by a note, whether it quoted any)."""
        lines = text.splitlines(keepends=True)
        hits = [bool(self.pattern.search(canonical(line))) for line in lines]
        if not any(hits):
            if not self.found_in(text):
                return text, False
            return WHOLE_OUTPUT_REDACTED + "\n", True  # split over lines
        hits = [hit or self.is_short_line(line) for hit, line in zip(hits, lines)]
        kept, previous = [], False
        for line, hit in zip(lines, hits):
            if not hit:
                kept.append(line)
            elif not previous:
                kept.append(REDACTED + ("\n" if line.endswith(("\n", "\r")) else ""))
            previous = hit
        redacted = "".join(kept)
        if self.found_in(redacted):
            return WHOLE_OUTPUT_REDACTED + "\n", True
        return redacted, True


def merge_streams(outputs: list) -> list:
    """Consecutive stream outputs of the same name as one, so that a line split over two prints is one line."""
    merged = []
    for output in outputs:
        previous = merged[-1] if merged else None
        if (output.get("output_type") == "stream" and previous is not None and previous.get("output_type") == "stream"
                and previous.get("name") == output.get("name")):
            previous["text"] = as_text(previous.get("text", "")) + as_text(output.get("text", ""))
        else:
            merged.append(output)
    return merged


def redact_output(output: NotebookNode, hidden: HiddenLines) -> bool:
    """Remove hidden test lines from one output in place; returns whether it quoted any."""
    kind = output.get("output_type")
    if kind == "stream":
        output["text"], quoted = hidden.redact(as_text(output.get("text", "")))
        return quoted
    if kind == "error":
        quoted = False
        for key in ("ename", "evalue"):
            output[key], hit = hidden.redact(as_text(output.get(key, "")))
            output[key] = output[key].rstrip("\n") if hit else output[key]
            quoted |= hit
        lines = []
        for line in output.get("traceback", []):
            line, hit = hidden.redact(as_text(line))
            lines.append(line.rstrip("\n") if hit else line)
            quoted |= hit
        output["traceback"] = lines
        return quoted
    data = output.get("data")
    if not isinstance(data, dict):
        return False
    quoted = False
    for mime in list(data):
        text = as_text(data[mime])
        if mime in TEXT_MIMES:
            data[mime], hit = hidden.redact(text)
        elif mime in MARKUP_MIMES or mime.startswith("text/") or mime.endswith(("+json", "+xml", "/json", "/xml")):
            hit = hidden.found_in(markup_text(text)) or hidden.found_in(text)
            if hit:
                del data[mime]
        else:
            hit = False
        quoted |= hit
    if quoted and not SHOWN & set(data):
        data["text/plain"] = WHOLE_OUTPUT_REDACTED
    return quoted


def source_test_cells(path: Path) -> list[str]:
    """The sources of the test cells of the source notebook at `path` ([] if there is none)."""
    if not path.is_file():
        return []
    notebook = nbformat.read(path, as_version=4)
    return [cell.source for cell in notebook.cells if is_test_cell(cell)]


class RedactHiddenTests(Preprocessor):
    """Remove every hidden test line from every output of every cell (see the module's docstring)."""

    enabled = Bool(True).tag(config=True)
    min_length = Int(12, help="Hidden lines with fewer letters and digits are removed only from outputs that quote a longer one"
                     ).tag(config=True)

    def source_notebook(self, resources: dict) -> Path | None:
        """solutions/<assignment>/<notebook>.ipynb, from the course directory's configuration."""
        from nbgrader.coursedir import CourseDirectory

        info = resources.get("nbgrader", {})
        if not info.get("assignment") or not info.get("notebook"):
            return None
        coursedir = CourseDirectory(config=self.config)
        folder = coursedir.format_path(coursedir.source_directory, ".", info["assignment"])
        return Path(folder) / f"{info['notebook']}.ipynb"

    def preprocess(self, nb: NotebookNode, resources: dict) -> tuple[NotebookNode, dict]:
        """Redact the outputs of every cell, with the hidden tests of this notebook's and the source's test cells."""
        sources = [cell.source for cell in nb.cells if is_test_cell(cell)]
        source = self.source_notebook(resources)
        if source is not None:
            sources += source_test_cells(source)
        hidden = HiddenLines(sources, self.min_length)
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            cell.outputs = merge_streams(cell.get("outputs", []))
            if any([redact_output(output, hidden) for output in cell.outputs]):
                self.log.info("Cell %d quoted hidden test code in its output: removed from the feedback", index)
        return nb, resources
