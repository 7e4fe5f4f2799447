//! Solution PDFs, Korean text included, with no font files on the machine.
//!
//! Users write problems in Korean, so the PDF must show Hangul; but shipping or finding a CJK font
//! file is fragile. PDF readers carry the Adobe CJK fonts themselves, so this module names one
//! without embedding it: a Type0 font `HYGoThic-Medium` with the predefined CMap `UniKS-UCS2-H`,
//! whose character codes are plain UCS-2. Every string is written as UCS-2 big-endian hex, so any
//! BMP character can be encoded (characters outside the BMP become U+FFFD). A `ToUnicode` map
//! lets text extraction work even in readers without the Adobe CMap resources.
//!
//! Layout is deliberately simple — a title, headings, wrapped body text, new pages when full —
//! and every coordinate is an integer number of points. Inputs are bounded (title length, total
//! text, page count) so a runaway model answer cannot make the renderer run unbounded.

use lopdf::content::{Content, Operation};
use lopdf::{dictionary, Document, Object, ObjectId, Stream, StringFormat};

/// The longest title, in characters.
pub const TITLE_CHARS_MAX: usize = 500;
/// The most text (title, headings and bodies together), in UTF-8 bytes.
pub const TEXT_BYTES_MAX: usize = 200 * 1024;
/// The most pages one PDF may have.
pub const PAGES_MAX: usize = 200;

/// A4 in PDF points (1/72 inch).
const PAGE_WIDTH_POINTS: i64 = 595;
const PAGE_HEIGHT_POINTS: i64 = 842;
const MARGIN_POINTS: i64 = 56;
const TEXT_WIDTH_POINTS: i64 = PAGE_WIDTH_POINTS - 2 * MARGIN_POINTS;
/// Spaces a tab stands for; tabs have no glyph.
const TAB_COLUMNS: usize = 4;

const FONT_NAME: &str = "HYGoThic-Medium";
const FONT_RESOURCE: &str = "F1";
/// Glyph width in 1/1000 em: ASCII is drawn half-width (one column), everything else full-width
/// (two columns). The `W` array says the same to the reader, so the wrap width is exact.
const HALF_WIDTH_UNITS: i64 = 500;
const FULL_WIDTH_UNITS: i64 = 1000;
/// CIDs of U+0020..U+007E under `UniKS-UCS2-H` (the proportional Latin glyphs of Adobe-Korea1).
const ASCII_CID_FIRST: i64 = 1;
const ASCII_CID_LAST: i64 = 95;
const REPLACEMENT_CODE: u16 = 0xFFFD;
const SPACE_CODE: u16 = 0x20;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PdfError {
    #[error("the title has {chars} characters; at most {chars_max} are allowed")]
    TitleTooLong { chars: usize, chars_max: usize },
    #[error("the text has {bytes} bytes; at most {bytes_max} are allowed")]
    TextTooLarge { bytes: usize, bytes_max: usize },
    #[error("the text needs more than {pages_max} pages")]
    TooManyPages { pages_max: usize },
    #[error("the PDF could not be written: {detail}")]
    Write { detail: String },
}

/// Renders a solution: `title`, then each `(heading, body)` section. Bodies are wrapped to the page
/// width; blank lines are kept. Empty headings are skipped.
pub fn render_solution_pdf(title: &str, sections: &[(&str, &str)]) -> Result<Vec<u8>, PdfError> {
    let title_chars = title.chars().count();
    if title_chars > TITLE_CHARS_MAX {
        return Err(PdfError::TitleTooLong { chars: title_chars, chars_max: TITLE_CHARS_MAX });
    }
    let text_bytes = sections
        .iter()
        .fold(title.len(), |sum, (heading, body)| sum.saturating_add(heading.len()).saturating_add(body.len()));
    if text_bytes > TEXT_BYTES_MAX {
        return Err(PdfError::TextTooLarge { bytes: text_bytes, bytes_max: TEXT_BYTES_MAX });
    }

    let mut layout = Layout::new();
    layout.block(Style::TITLE, title)?;
    for (heading, body) in sections {
        layout.block(Style::HEADING, heading)?;
        layout.block(Style::BODY, body)?;
    }
    write_document(title, layout.finish())
}

/// How one kind of text is set. Sizes and distances in points.
#[derive(Clone, Copy)]
struct Style {
    size_points: i64,
    leading_points: i64,
    /// Extra space above the block (not at the top of a page).
    space_before_points: i64,
}

impl Style {
    const TITLE: Style = Style { size_points: 20, leading_points: 28, space_before_points: 0 };
    const HEADING: Style = Style { size_points: 14, leading_points: 20, space_before_points: 12 };
    const BODY: Style = Style { size_points: 11, leading_points: 16, space_before_points: 2 };

    /// How many columns (half-width glyphs) fit on one line at this size.
    fn columns_max(self) -> usize {
        let column_units = TEXT_WIDTH_POINTS * 1000 * 2 / (self.size_points * FULL_WIDTH_UNITS);
        usize::try_from(column_units).unwrap_or(1).max(2)
    }
}

/// One set line: where it goes and its UCS-2 codes.
struct PlacedLine {
    size_points: i64,
    y_points: i64,
    codes: Vec<u16>,
}

/// Greedy page filling, top to bottom.
struct Layout {
    pages: Vec<Vec<PlacedLine>>,
    /// Baseline of the previous line on the current page; starts at the top margin.
    y_points: i64,
}

impl Layout {
    fn new() -> Layout {
        Layout { pages: vec![Vec::new()], y_points: PAGE_HEIGHT_POINTS - MARGIN_POINTS }
    }

    /// Sets `text` in `style`: each paragraph (split at `\n`) is wrapped; an empty text sets nothing.
    fn block(&mut self, style: Style, text: &str) -> Result<(), PdfError> {
        if text.is_empty() {
            return Ok(());
        }
        let at_page_top = self.pages.last().is_some_and(Vec::is_empty);
        if !at_page_top {
            self.y_points -= style.space_before_points;
        }
        for paragraph in text.split('\n') {
            let codes = encode(paragraph);
            for line in wrap(&codes, style.columns_max()) {
                self.place(style, line.to_vec())?;
            }
        }
        Ok(())
    }

    fn place(&mut self, style: Style, codes: Vec<u16>) -> Result<(), PdfError> {
        if self.y_points - style.leading_points < MARGIN_POINTS {
            if self.pages.len() >= PAGES_MAX {
                return Err(PdfError::TooManyPages { pages_max: PAGES_MAX });
            }
            self.pages.push(Vec::new());
            self.y_points = PAGE_HEIGHT_POINTS - MARGIN_POINTS;
        }
        self.y_points -= style.leading_points;
        let line = PlacedLine { size_points: style.size_points, y_points: self.y_points, codes };
        match self.pages.last_mut() {
            Some(page) => page.push(line),
            None => self.pages.push(vec![line]),
        }
        Ok(())
    }

    fn finish(self) -> Vec<Vec<PlacedLine>> {
        self.pages
    }
}

/// UCS-2 codes of a paragraph: BMP characters as they are (or their look-alike), others U+FFFD,
/// tabs as spaces, other control characters dropped (they have no glyph and would confuse readers).
fn encode(paragraph: &str) -> Vec<u16> {
    let mut codes = Vec::with_capacity(paragraph.len());
    for character in paragraph.chars() {
        if character == '\t' {
            codes.extend([SPACE_CODE; TAB_COLUMNS]);
        } else if character.is_control() {
            continue;
        } else {
            codes.push(u16::try_from(u32::from(look_alike(character))).unwrap_or(REPLACEMENT_CODE));
        }
    }
    codes
}

/// `UniKS-UCS2-H` covers KS X 1001, which lacks a few characters models write all the time — the
/// minus sign above all. Those would be drawn blank, so each is replaced by a covered look-alike.
fn look_alike(character: char) -> char {
    match character {
        '\u{2212}' | '\u{2010}' | '\u{2011}' => '-',
        '\u{00B7}' | '\u{22C5}' | '\u{2219}' | '\u{2027}' => '\u{30FB}',
        '\u{00A0}' | '\u{2002}'..='\u{200A}' | '\u{202F}' => ' ',
        '\u{2217}' => '*',
        '\u{223C}' => '~',
        '\u{2223}' => '|',
        '\u{00AC}' => '\u{FFE2}',
        '\u{20A9}' => '\u{FFE6}',
        '\u{27E8}' | '\u{2329}' => '\u{3008}',
        '\u{27E9}' | '\u{232A}' => '\u{3009}',
        other => other,
    }
}

/// Columns a code takes: printable ASCII is half-width, everything else full-width.
fn columns(code: u16) -> usize {
    if (0x20..=0x7E).contains(&code) {
        1
    } else {
        2
    }
}

/// Greedy wrap to `columns_max`: break after the last space that fits, or inside a word that
/// alone is wider than a line. An empty paragraph is one empty line, so blank lines are kept.
fn wrap(codes: &[u16], columns_max: usize) -> Vec<&[u16]> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut width = 0;
    let mut last_space: Option<usize> = None;
    let mut index = 0;
    while index < codes.len() {
        let code = codes[index];
        let code_columns = columns(code);
        if width + code_columns > columns_max && index > start && code != SPACE_CODE {
            match last_space {
                Some(space) if space > start => {
                    lines.push(trim_end_spaces(&codes[start..space]));
                    start = space + 1;
                }
                _ => {
                    lines.push(&codes[start..index]);
                    start = index;
                }
            }
            width = codes[start..index].iter().map(|code| columns(*code)).sum();
            last_space = None;
            continue;
        }
        if code == SPACE_CODE {
            last_space = Some(index);
        }
        width += code_columns;
        index += 1;
    }
    lines.push(trim_end_spaces(&codes[start..]));
    lines
}

/// Spaces at a line's end are invisible and may overflow the width, so they are not set.
fn trim_end_spaces(line: &[u16]) -> &[u16] {
    let end = line.iter().rposition(|code| *code != SPACE_CODE).map_or(0, |last| last + 1);
    &line[..end]
}

fn hex_string(codes: &[u16]) -> Object {
    let bytes = codes.iter().flat_map(|code| code.to_be_bytes()).collect();
    Object::String(bytes, StringFormat::Hexadecimal)
}

fn write_error(error: impl std::fmt::Display) -> PdfError {
    PdfError::Write { detail: error.to_string() }
}

fn write_document(title: &str, pages: Vec<Vec<PlacedLine>>) -> Result<Vec<u8>, PdfError> {
    let mut document = Document::with_version("1.5");
    let pages_id = document.new_object_id();
    let font_id = add_font(&mut document);
    let resources_id = document.add_object(dictionary! {
        "Font" => dictionary! { FONT_RESOURCE => font_id },
    });

    let mut kids = Vec::with_capacity(pages.len());
    for lines in &pages {
        let mut operations = Vec::with_capacity(lines.len() * 5);
        for line in lines {
            if line.codes.is_empty() {
                continue;
            }
            operations.extend([
                Operation::new("BT", vec![]),
                Operation::new("Tf", vec![FONT_RESOURCE.into(), line.size_points.into()]),
                Operation::new("Td", vec![MARGIN_POINTS.into(), line.y_points.into()]),
                Operation::new("Tj", vec![hex_string(&line.codes)]),
                Operation::new("ET", vec![]),
            ]);
        }
        let content = Content { operations }.encode().map_err(write_error)?;
        let content_id = document.add_object(Stream::new(dictionary! {}, content));
        let page_id = document.add_object(dictionary! {
            "Type" => "Page",
            "Parent" => pages_id,
            "Contents" => content_id,
        });
        kids.push(Object::Reference(page_id));
    }
    let page_count = i64::try_from(kids.len()).map_err(write_error)?;
    let media_box: Vec<Object> = vec![0.into(), 0.into(), PAGE_WIDTH_POINTS.into(), PAGE_HEIGHT_POINTS.into()];
    document.objects.insert(
        pages_id,
        Object::Dictionary(dictionary! {
            "Type" => "Pages",
            "Kids" => kids,
            "Count" => page_count,
            "Resources" => resources_id,
            "MediaBox" => media_box,
        }),
    );
    let catalog_id = document.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
    let info_id = document.add_object(dictionary! {
        "Title" => text_string(title),
        "Producer" => Object::string_literal("creditgraph"),
    });
    document.trailer.set("Root", catalog_id);
    document.trailer.set("Info", info_id);
    document.compress();
    let mut bytes = Vec::new();
    document.save_to(&mut bytes).map_err(write_error)?;
    Ok(bytes)
}

/// A PDF text string (document metadata) in UTF-16BE with its byte-order mark.
fn text_string(text: &str) -> Object {
    let mut bytes = vec![0xFE, 0xFF];
    bytes.extend(text.encode_utf16().flat_map(u16::to_be_bytes));
    Object::String(bytes, StringFormat::Hexadecimal)
}

/// The non-embedded Korean font: Type0 → CIDFontType0 (Adobe-Korea1-2) → FontDescriptor, plus a
/// `ToUnicode` map. Metrics are those of HYGoThic-Medium as the Adobe CJK font packs declare them.
fn add_font(document: &mut Document) -> ObjectId {
    let descriptor_id = document.add_object(dictionary! {
        "Type" => "FontDescriptor",
        "FontName" => FONT_NAME,
        "Flags" => 4,
        "FontBBox" => vec![(-6).into(), (-145).into(), 1003.into(), 880.into()],
        "ItalicAngle" => 0,
        "Ascent" => 880,
        "Descent" => -120,
        "CapHeight" => 880,
        "StemV" => 93,
    });
    let cid_font_id = document.add_object(dictionary! {
        "Type" => "Font",
        "Subtype" => "CIDFontType0",
        "BaseFont" => FONT_NAME,
        "CIDSystemInfo" => dictionary! {
            "Registry" => Object::string_literal("Adobe"),
            "Ordering" => Object::string_literal("Korea1"),
            "Supplement" => 2,
        },
        "FontDescriptor" => descriptor_id,
        "DW" => FULL_WIDTH_UNITS,
        "W" => vec![ASCII_CID_FIRST.into(), ASCII_CID_LAST.into(), HALF_WIDTH_UNITS.into()],
    });
    let to_unicode_id = document.add_object(Stream::new(dictionary! {}, to_unicode_cmap().into_bytes()));
    document.add_object(dictionary! {
        "Type" => "Font",
        "Subtype" => "Type0",
        "BaseFont" => FONT_NAME,
        "Encoding" => "UniKS-UCS2-H",
        "DescendantFonts" => vec![Object::Reference(cid_font_id)],
        "ToUnicode" => to_unicode_id,
    })
}

/// A CMap mapping every 2-byte code to the same UTF-16 code unit (surrogates are never written).
/// A `bfrange` may not cross a first-byte boundary and a block holds at most 100 ranges.
fn to_unicode_cmap() -> String {
    let ranges: Vec<String> = (0x00..=0xFFu16)
        .filter(|high| !(0xD8..=0xDF).contains(high))
        .map(|high| format!("<{high:02X}00> <{high:02X}FF> <{high:02X}00>"))
        .collect();
    let mut cmap = String::from(concat!(
        "/CIDInit /ProcSet findresource begin\n12 dict begin\nbegincmap\n",
        "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n",
        "/CMapName /Adobe-Identity-UCS def\n/CMapType 2 def\n",
        "1 begincodespacerange\n<0000> <FFFF>\nendcodespacerange\n",
    ));
    for block in ranges.chunks(100) {
        cmap.push_str(&format!("{} beginbfrange\n{}\nendbfrange\n", block.len(), block.join("\n")));
    }
    cmap.push_str("endcmap\nCMapName currentdict /CMapResource defineresource pop\nend\nend\n");
    cmap
}

#[cfg(test)]
mod tests {
    use super::*;
    use lopdf::Dictionary;

    /// Each page's shown strings, decoded from UCS-2 big-endian: one entry per set line.
    fn page_lines(bytes: &[u8]) -> Vec<Vec<String>> {
        let document = Document::load_mem(bytes).expect("lopdf loads the PDF");
        document
            .get_pages()
            .values()
            .map(|page_id| {
                let content = document.get_page_content(*page_id).expect("page content");
                let content = Content::decode(&content).expect("content decodes");
                content
                    .operations
                    .iter()
                    .filter(|operation| operation.operator == "Tj")
                    .map(|operation| match &operation.operands[..] {
                        [Object::String(bytes, StringFormat::Hexadecimal)] => {
                            assert_eq!(bytes.len() % 2, 0, "UCS-2 has two bytes per character");
                            let units: Vec<u16> =
                                bytes.chunks(2).map(|pair| u16::from_be_bytes([pair[0], pair[1]])).collect();
                            String::from_utf16(&units).expect("UCS-2 of BMP characters")
                        }
                        other => panic!("Tj with {other:?}"),
                    })
                    .collect()
            })
            .collect()
    }

    fn without_whitespace(text: &str) -> String {
        text.chars().filter(|character| !character.is_whitespace()).collect()
    }

    fn render(title: &str, sections: &[(&str, &str)]) -> Vec<u8> {
        render_solution_pdf(title, sections).expect("renders")
    }

    #[test]
    fn korean_english_and_math_render_and_decode_back() {
        let problem = "x² + 2x - 3 = 0 의 해를 구하시오. Find all real x with x ≤ 10 and √x ∈ ℕ.";
        let answer = "x = 1 또는 x = -3 (∴ ∑ = -2, π ≈ 3.14, ∫ x dx = ½ x², θ ≠ 90°, A ⊂ B)";
        let bytes = render("풀이 Solution", &[("문제 Problem", problem), ("답 Answer", answer)]);
        assert!(bytes.starts_with(b"%PDF-1.5"));
        let pages = page_lines(&bytes);
        assert_eq!(pages.len(), 1);
        assert_eq!(pages[0][0], "풀이 Solution");
        assert_eq!(pages[0][1], "문제 Problem");
        let all: String = pages[0].concat();
        let expected = without_whitespace(&format!("풀이 Solution문제 Problem{problem}답 Answer{answer}"));
        assert_eq!(without_whitespace(&all), expected);
        // A second, independent reader where one is installed (poppler); the test does not need it.
        if let Some(extracted) = pdftotext(&bytes) {
            assert_eq!(without_whitespace(&extracted), expected);
        }
    }

    /// The text `pdftotext` extracts, or `None` when it is not installed.
    fn pdftotext(bytes: &[u8]) -> Option<String> {
        let folder = tempfile::tempdir().expect("temp dir");
        let path = folder.path().join("solution.pdf");
        std::fs::write(&path, bytes).expect("write the PDF");
        let output = std::process::Command::new("pdftotext").arg(&path).arg("-").output().ok()?;
        assert!(output.status.success(), "pdftotext failed: {}", String::from_utf8_lossy(&output.stderr));
        Some(String::from_utf8(output.stdout).expect("pdftotext writes UTF-8"))
    }

    #[test]
    fn strings_are_ucs2_hex_in_the_content_stream() {
        let bytes = render("한", &[]);
        let document = Document::load_mem(&bytes).expect("loads");
        let page_id = *document.get_pages().values().next().expect("a page");
        let content = document.get_page_content(page_id).expect("content");
        let text = String::from_utf8_lossy(&content);
        // U+D55C, written as hex, shown with Tj, in the Korean font resource.
        assert!(text.contains("<D55C> Tj") || text.contains("<D55C>Tj"), "{text}");
        assert!(text.contains("/F1 20 Tf"), "{text}");
    }

    #[test]
    fn characters_outside_the_bmp_become_replacement_characters() {
        let bytes = render("", &[("", "a𝔸b😀")]);
        assert_eq!(page_lines(&bytes), [["a\u{FFFD}b\u{FFFD}"]]);
    }

    #[test]
    fn characters_the_korean_cmap_lacks_become_look_alikes() {
        let bytes = render("", &[("", "x − 3 = 5·2 ⟨a⟩ ¬p ₩100")]);
        assert_eq!(page_lines(&bytes), [["x - 3 = 5\u{30FB}2 \u{3008}a\u{3009} \u{FFE2}p \u{FFE6}100"]]);
    }

    #[test]
    fn tabs_become_spaces_and_control_characters_are_dropped() {
        let bytes = render("", &[("", "a\tb\r\u{7}c")]);
        assert_eq!(page_lines(&bytes), [["a    bc"]]);
    }

    #[test]
    fn font_dictionaries_name_the_non_embedded_korean_font() {
        let bytes = render("가", &[]);
        let document = Document::load_mem(&bytes).expect("loads");
        let page_id = *document.get_pages().values().next().expect("a page");
        let fonts = document.get_page_fonts(page_id).expect("fonts");
        assert_eq!(fonts.len(), 1);
        let font = fonts.get(FONT_RESOURCE.as_bytes()).expect("font F1");
        let name = |dict: &Dictionary, key: &[u8]| {
            String::from_utf8(dict.get(key).and_then(Object::as_name).expect("a name").to_vec()).expect("utf-8")
        };
        let deref = |object: &Object| -> Dictionary {
            let id = object.as_reference().expect("a reference");
            document.get_dictionary(id).expect("a dictionary").clone()
        };
        assert_eq!(name(font, b"Type"), "Font");
        assert_eq!(name(font, b"Subtype"), "Type0");
        assert_eq!(name(font, b"BaseFont"), "HYGoThic-Medium");
        assert_eq!(name(font, b"Encoding"), "UniKS-UCS2-H");
        let descendants = font.get(b"DescendantFonts").and_then(Object::as_array).expect("DescendantFonts");
        assert_eq!(descendants.len(), 1);
        let cid_font = deref(&descendants[0]);
        assert_eq!(name(&cid_font, b"Subtype"), "CIDFontType0");
        assert_eq!(name(&cid_font, b"BaseFont"), "HYGoThic-Medium");
        let info = cid_font.get(b"CIDSystemInfo").and_then(Object::as_dict).expect("CIDSystemInfo");
        assert_eq!(info.get(b"Registry").and_then(Object::as_str).expect("Registry"), b"Adobe");
        assert_eq!(info.get(b"Ordering").and_then(Object::as_str).expect("Ordering"), b"Korea1");
        assert_eq!(info.get(b"Supplement").and_then(Object::as_i64).expect("Supplement"), 2);
        let descriptor = deref(cid_font.get(b"FontDescriptor").expect("FontDescriptor"));
        assert_eq!(name(&descriptor, b"Type"), "FontDescriptor");
        assert_eq!(name(&descriptor, b"FontName"), "HYGoThic-Medium");
        // Nothing is embedded: no font file anywhere.
        for key in [&b"FontFile"[..], b"FontFile2", b"FontFile3"] {
            assert!(descriptor.get(key).is_err(), "{}", String::from_utf8_lossy(key));
        }
        let to_unicode = font.get(b"ToUnicode").and_then(Object::as_reference).expect("ToUnicode");
        let cmap = document.get_object(to_unicode).and_then(Object::as_stream).expect("a stream");
        let cmap = cmap.decompressed_content().unwrap_or_else(|_| cmap.content.clone());
        assert!(String::from_utf8_lossy(&cmap).contains("<AC00> <ACFF> <AC00>"));
    }

    #[test]
    fn pages_are_a4() {
        let bytes = render("t", &[]);
        let document = Document::load_mem(&bytes).expect("loads");
        let catalog = document.catalog().expect("catalog");
        let pages_id = catalog.get(b"Pages").and_then(Object::as_reference).expect("Pages");
        let pages = document.get_dictionary(pages_id).expect("pages");
        let media_box: Vec<i64> = pages
            .get(b"MediaBox")
            .and_then(Object::as_array)
            .expect("MediaBox")
            .iter()
            .map(|value| value.as_i64().expect("integer"))
            .collect();
        assert_eq!(media_box, [0, 0, 595, 842]);
    }

    #[test]
    fn long_text_wraps_and_makes_several_pages() {
        let sentence = "한국어 문장과 English words together, 수식 a² + b² = c² 도 함께. ";
        let body = sentence.repeat(400);
        let bytes = render("긴 풀이", &[("풀이", &body), ("끝", "마지막 줄")]);
        let pages = page_lines(&bytes);
        assert!(pages.len() >= 3, "{} pages", pages.len());
        let style = Style::BODY;
        for line in pages.iter().flatten() {
            let width: usize = line.encode_utf16().map(columns).sum();
            assert!(width <= style.columns_max(), "{width} columns: {line}");
        }
        let all: String = pages.iter().flatten().map(String::as_str).collect();
        assert_eq!(without_whitespace(&all), without_whitespace(&format!("긴 풀이풀이{body}끝마지막 줄")));
        assert_eq!(pages.last().and_then(|page| page.last()).map(String::as_str), Some("마지막 줄"));
        // Words are kept whole: every line ends at a word boundary of the sentence.
        for line in &pages[1] {
            assert!(!line.starts_with(' '), "{line:?}");
        }
    }

    #[test]
    fn a_word_wider_than_a_line_is_broken_inside() {
        let columns_max = Style::BODY.columns_max();
        let word = "x".repeat(columns_max * 2 + 3);
        let pages = page_lines(&render("", &[("", &word)]));
        let widths: Vec<usize> = pages[0].iter().map(String::len).collect();
        assert_eq!(widths, [columns_max, columns_max, 3]);
        // Hangul is full-width: half as many characters fit.
        let per_line = columns_max / 2;
        let hangul = "가".repeat(per_line * 2 + 1);
        let pages = page_lines(&render("", &[("", &hangul)]));
        let lengths: Vec<usize> = pages[0].iter().map(|line| line.chars().count()).collect();
        assert_eq!(lengths, [per_line, per_line, 1]);
    }

    #[test]
    fn spaces_at_a_break_are_not_set() {
        let codes: Vec<u16> = "aaaa   bb  ".encode_utf16().collect();
        let lines: Vec<String> = wrap(&codes, 4).into_iter().map(String::from_utf16_lossy).collect();
        assert_eq!(lines, ["aaaa", "bb"]);
        let codes: Vec<u16> = "ab cd ef".encode_utf16().collect();
        let lines: Vec<String> = wrap(&codes, 5).into_iter().map(String::from_utf16_lossy).collect();
        assert_eq!(lines, ["ab cd", "ef"]);
    }

    #[test]
    fn blank_lines_are_kept_as_vertical_space() {
        let bytes = render("", &[("", "one\n\n\ntwo")]);
        let document = Document::load_mem(&bytes).expect("loads");
        let page_id = *document.get_pages().values().next().expect("a page");
        let content = Content::decode(&document.get_page_content(page_id).expect("content")).expect("decodes");
        let baselines: Vec<i64> = content
            .operations
            .iter()
            .filter(|operation| operation.operator == "Td")
            .map(|operation| operation.operands[1].as_i64().expect("integer"))
            .collect();
        assert_eq!(baselines.len(), 2);
        assert_eq!(baselines[0] - baselines[1], 3 * Style::BODY.leading_points);
    }

    #[test]
    fn title_length_is_bounded() {
        assert!(render_solution_pdf(&"제".repeat(TITLE_CHARS_MAX), &[]).is_ok());
        assert_eq!(
            render_solution_pdf(&"제".repeat(TITLE_CHARS_MAX + 1), &[]),
            Err(PdfError::TitleTooLong { chars: TITLE_CHARS_MAX + 1, chars_max: TITLE_CHARS_MAX })
        );
    }

    #[test]
    fn total_text_is_bounded() {
        let half = "a ".repeat(TEXT_BYTES_MAX / 4);
        let error = render_solution_pdf("t", &[("h", &half), ("h", &half)]);
        assert_eq!(error, Err(PdfError::TextTooLarge { bytes: 1 + 2 + 2 * half.len(), bytes_max: TEXT_BYTES_MAX }));
        let fits = "a".repeat(TEXT_BYTES_MAX - 1);
        assert!(render_solution_pdf("t", &[("", &fits)]).is_ok());
    }

    #[test]
    fn page_count_is_bounded() {
        let lines_per_page =
            usize::try_from((PAGE_HEIGHT_POINTS - 2 * MARGIN_POINTS) / Style::BODY.leading_points).expect("positive");
        let fits = "x\n".repeat(lines_per_page * PAGES_MAX);
        let pages = page_lines(&render("", &[("", fits.trim_end())]));
        assert_eq!(pages.len(), PAGES_MAX);
        let too_many = "x\n".repeat(lines_per_page * PAGES_MAX + 1);
        assert_eq!(render_solution_pdf("", &[("", &too_many)]), Err(PdfError::TooManyPages { pages_max: PAGES_MAX }));
    }
}
