//! The built-in renderer: a small, real SVG storyboard of the solution, one frame per step.
//!
//! It exists so that a video job does real work end to end (claim, progress, artifact, settle)
//! on a machine with no video tool installed: the artifact is a viewable picture of what a video
//! would show. It reads only the input snapshot, does no I/O, and its output is bounded by
//! construction (frames, characters per frame, lines per frame), whatever the input says.

use async_trait::async_trait;
use serde_json::Value;

use super::{ProgressSink, RenderFailure, Rendered, Renderer};
use crate::code::JobErrorCode;

/// Frames in one storyboard, the problem's included.
pub const FRAMES_MAX: usize = 24;
/// Characters of text kept per frame; the rest is cut with an ellipsis.
pub const FRAME_CHARS_MAX: usize = 360;
/// Wrapped lines drawn per frame.
const FRAME_LINES_MAX: usize = 6;
/// Width of a wrapped line, in half-width cells (a Hangul or CJK character takes two).
const LINE_CELLS_MAX: usize = 64;
const WIDTH_PX: usize = 800;
const FRAME_HEIGHT_PX: usize = 190;
const FRAME_GAP_PX: usize = 16;
const MARGIN_PX: usize = 24;
const LINE_HEIGHT_PX: usize = 22;

/// Renders the storyboard SVG (`image/svg+xml`).
#[derive(Clone, Debug, Default)]
pub struct BuiltinRenderer;

/// One frame of the storyboard: a caption and its text.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Frame {
    caption: String,
    text: String,
}

fn invalid_input(detail: impl Into<String>) -> RenderFailure {
    RenderFailure {
        transient: false,
        code: JobErrorCode::InvalidInput,
        stage: "scriptify".to_owned(),
        detail: detail.into(),
    }
}

/// Whether a line starts a new step inside a paragraph: a list marker or a numbered step.
fn starts_step(line: &str) -> bool {
    let line = line.trim_start();
    if ["- ", "* ", "• ", "Step ", "step ", "단계"].iter().any(|marker| line.starts_with(marker)) {
        return true;
    }
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && digits <= 3 && matches!(line.as_bytes().get(digits), Some(b'.' | b')'))
}

/// Splits text into steps: paragraphs (separated by blank lines), and inside a paragraph, lines
/// that start a list item or a numbered step.
fn steps(text: &str) -> Vec<String> {
    let mut steps: Vec<String> = Vec::new();
    let mut current = String::new();
    let flush = |current: &mut String, steps: &mut Vec<String>| {
        let step = current.trim();
        if !step.is_empty() {
            steps.push(step.to_owned());
        }
        current.clear();
    };
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || starts_step(line) {
            flush(&mut current, &mut steps);
        }
        if !line.is_empty() {
            if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(line.trim_start_matches('#').trim_start());
        }
    }
    flush(&mut current, &mut steps);
    steps
}

fn text_field(input: &Value, name: &str) -> Result<String, RenderFailure> {
    match input.get(name) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(_) => Err(invalid_input(format!("the input's `{name}` must be a string"))),
    }
}

/// The frames of a storyboard: the problem, then the answer's steps, then the explanation's.
fn frames(input: &str) -> Result<Vec<Frame>, RenderFailure> {
    let input: Value =
        serde_json::from_str(input).map_err(|error| invalid_input(format!("the input is not JSON: {error}")))?;
    if !input.is_object() {
        return Err(invalid_input("the input must be a JSON object"));
    }
    let problem = text_field(&input, "problem")?;
    let answer = text_field(&input, "answer")?;
    let explanation = text_field(&input, "explanation")?;
    let mut frames = Vec::new();
    if !problem.trim().is_empty() {
        frames.push(Frame { caption: "Problem".to_owned(), text: problem.trim().to_owned() });
    }
    let mut step = 0;
    for (kind, text) in [("Answer", &answer), ("Explanation", &explanation)] {
        for text in steps(text) {
            step += 1;
            frames.push(Frame { caption: format!("{step}. {kind}"), text });
        }
    }
    if frames.is_empty() {
        return Err(invalid_input("the input has no problem, answer or explanation to show"));
    }
    frames.truncate(FRAMES_MAX);
    Ok(frames)
}

/// The XML 1.0 text of `text`: markup characters escaped, characters XML forbids dropped.
fn escape_xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(' '),
            character if character.is_control() || matches!(character, '\u{FFFE}' | '\u{FFFF}') => {}
            character => out.push(character),
        }
    }
    out
}

/// Half-width cells a character takes: two for Hangul, CJK and full-width forms.
fn cells(character: char) -> usize {
    let code = u32::from(character);
    let wide = matches!(code,
        0x1100..=0x115F | 0x2E80..=0xA4CF | 0xAC00..=0xD7A3 | 0xF900..=0xFAFF | 0xFE30..=0xFE4F | 0xFF00..=0xFF60 | 0xFFE0..=0xFFE6);
    if wide {
        2
    } else {
        1
    }
}

/// `text` cut to [`FRAME_CHARS_MAX`] characters and wrapped into at most [`FRAME_LINES_MAX`]
/// lines of [`LINE_CELLS_MAX`] cells (at spaces where possible); an ellipsis marks a cut.
fn wrap(text: &str) -> Vec<String> {
    let mut cut = text.chars().count() > FRAME_CHARS_MAX;
    let text: String = text.chars().take(FRAME_CHARS_MAX).collect();
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    let mut width = 0;
    for word in text.split_whitespace() {
        let word_width: usize = word.chars().map(cells).sum();
        if width > 0 && width + 1 + word_width <= LINE_CELLS_MAX {
            line.push(' ');
            line.push_str(word);
            width += 1 + word_width;
            continue;
        }
        if width > 0 {
            lines.push(std::mem::take(&mut line));
            width = 0;
        }
        // A word wider than a line (long formulas, text without spaces) is broken anywhere.
        for character in word.chars() {
            let character_width = cells(character);
            if width + character_width > LINE_CELLS_MAX {
                lines.push(std::mem::take(&mut line));
                width = 0;
            }
            line.push(character);
            width += character_width;
        }
    }
    if width > 0 {
        lines.push(line);
    }
    if lines.len() > FRAME_LINES_MAX {
        lines.truncate(FRAME_LINES_MAX);
        cut = true;
    }
    if cut {
        if let Some(last) = lines.last_mut() {
            while last.chars().map(cells).sum::<usize>() + 1 > LINE_CELLS_MAX {
                last.pop();
            }
            last.push('…');
        }
    }
    lines
}

fn frame_svg(index: usize, frame: &Frame) -> String {
    let top = MARGIN_PX + index * (FRAME_HEIGHT_PX + FRAME_GAP_PX);
    let inner = WIDTH_PX - 2 * MARGIN_PX;
    let mut svg = format!(
        "<g id=\"frame-{number}\"><rect x=\"{MARGIN_PX}\" y=\"{top}\" width=\"{inner}\" height=\"{FRAME_HEIGHT_PX}\" \
         rx=\"12\" fill=\"#ffffff\" stroke=\"#c8ccd4\"/>\n<text x=\"{x}\" y=\"{caption_y}\" class=\"caption\">{caption}</text>\n",
        number = index + 1,
        x = MARGIN_PX + 20,
        caption_y = top + 34,
        caption = escape_xml(&frame.caption),
    );
    for (line_index, line) in wrap(&frame.text).iter().enumerate() {
        svg.push_str(&format!(
            "<text x=\"{x}\" y=\"{y}\" class=\"body\">{text}</text>\n",
            x = MARGIN_PX + 20,
            y = top + 68 + line_index * LINE_HEIGHT_PX,
            text = escape_xml(line),
        ));
    }
    svg.push_str("</g>\n");
    svg
}

#[async_trait]
impl Renderer for BuiltinRenderer {
    async fn render(&self, job_id: &str, input: &str, progress: &dyn ProgressSink) -> Result<Rendered, RenderFailure> {
        progress.progress("scriptify", 5);
        let frames = frames(input)?;
        progress.progress("render", 20);
        let height = 2 * MARGIN_PX + frames.len() * FRAME_HEIGHT_PX + (frames.len() - 1) * FRAME_GAP_PX;
        let mut body = String::new();
        for (index, frame) in frames.iter().enumerate() {
            body.push_str(&frame_svg(index, frame));
            let percent = 20 + (70 * (index + 1) / frames.len()) as u8;
            progress.progress("render", percent);
            // Long storyboards stay cancelable between frames.
            tokio::task::yield_now().await;
        }
        progress.progress("compose", 95);
        let svg = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH_PX}\" height=\"{height}\" \
             viewBox=\"0 0 {WIDTH_PX} {height}\" role=\"img\">\n\
             <title>Storyboard of {job}</title>\n\
             <style>.caption{{font:bold 18px sans-serif;fill:#1f3a93}} .body{{font:16px sans-serif;fill:#222}}</style>\n\
             <rect width=\"100%\" height=\"100%\" fill=\"#f4f5f7\"/>\n{body}</svg>\n",
            job = escape_xml(job_id),
        );
        progress.progress("compose", 100);
        Ok(Rendered { bytes: svg.into_bytes(), content_type: "image/svg+xml".to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;

    #[derive(Default)]
    struct Recorded(Mutex<Vec<(String, u8)>>);

    impl ProgressSink for Recorded {
        fn progress(&self, stage: &str, percent: u8) {
            self.0.lock().expect("progress lock").push((stage.to_owned(), percent));
        }
    }

    async fn render(input: &Value) -> (Result<Rendered, RenderFailure>, Vec<(String, u8)>) {
        let progress = Recorded::default();
        let result = BuiltinRenderer.render("job-1", &input.to_string(), &progress).await;
        let seen = progress.0.lock().expect("progress lock").clone();
        (result, seen)
    }

    fn svg(rendered: &Rendered) -> &str {
        std::str::from_utf8(&rendered.bytes).expect("SVG is UTF-8")
    }

    #[tokio::test]
    async fn one_frame_per_step_with_escaped_korean_text() {
        let input = json!({
            "problem": "x^2 < 4 & x > 0 일 때 x의 범위는?",
            "answer": "0 < x < 2",
            "explanation": "1. 부등식을 풉니다: -2 < x < 2.\n2. x > 0 과 합칩니다.\n\n따라서 \"0 < x < 2\" 입니다.",
        });
        let (result, progress) = render(&input).await;
        let rendered = result.expect("renders");
        assert_eq!(rendered.content_type, "image/svg+xml");
        let svg = svg(&rendered);
        assert!(svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"), "{svg}");
        // problem, answer, three explanation steps
        assert_eq!(svg.matches("<g id=\"frame-").count(), 5, "{svg}");
        assert!(svg.contains("x^2 &lt; 4 &amp; x &gt; 0 일 때 x의 범위는?"), "{svg}");
        assert!(svg.contains("따라서 &quot;0 &lt; x &lt; 2&quot; 입니다."), "{svg}");
        assert!(!svg.contains("< 4"), "unescaped text: {svg}");
        let stages: Vec<&str> = progress.iter().map(|(stage, _)| stage.as_str()).collect();
        for stage in ["scriptify", "render", "compose"] {
            assert!(stages.contains(&stage), "{progress:?}");
        }
        assert_eq!(progress.last(), Some(&("compose".to_owned(), 100)));
        assert!(progress.windows(2).all(|pair| pair[0].1 <= pair[1].1), "progress goes forward: {progress:?}");
    }

    #[tokio::test]
    async fn storyboards_are_bounded_whatever_the_input() {
        let explanation = (1..=100).map(|step| format!("Step {step}: {}", "긴 설명 ".repeat(200))).collect::<Vec<_>>();
        let input = json!({"problem": "p".repeat(100_000), "answer": null, "explanation": explanation.join("\n")});
        let (result, _) = render(&input).await;
        let rendered = result.expect("renders");
        let svg = svg(&rendered);
        assert_eq!(svg.matches("<g id=\"frame-").count(), FRAMES_MAX);
        assert!(svg.matches("class=\"body\"").count() <= FRAMES_MAX * FRAME_LINES_MAX);
        assert!(svg.contains('…'), "cut text is marked");
        assert!(rendered.bytes.len() < 128 * 1024, "{} bytes", rendered.bytes.len());
    }

    #[tokio::test]
    async fn inputs_without_content_fail_permanently_as_invalid_input() {
        for input in [json!({}), json!({"problem": " ", "answer": ""}), json!([1]), json!({"answer": 3})] {
            let (result, _) = render(&input).await;
            let failure = result.expect_err("nothing to render");
            assert_eq!((failure.transient, failure.code), (false, JobErrorCode::InvalidInput), "{input}");
            assert_eq!(failure.stage, "scriptify");
        }
        let progress = Recorded::default();
        let failure = BuiltinRenderer.render("job-1", "not json", &progress).await.expect_err("not JSON");
        assert_eq!(failure.code, JobErrorCode::InvalidInput);
    }

    #[test]
    fn steps_split_on_paragraphs_and_list_items() {
        assert_eq!(steps("a\nb\n\nc"), vec!["a b", "c"]);
        assert_eq!(
            steps("intro\n1. one\n2) two\n- three\n단계 4: 넷"),
            vec!["intro", "1. one", "2) two", "- three", "단계 4: 넷"]
        );
        assert_eq!(steps("## Title\n\n\n"), vec!["Title"]);
        assert!(steps("  \n\n").is_empty());
    }

    #[test]
    fn wrapping_counts_wide_characters_twice_and_breaks_long_words() {
        let lines = wrap(&"가".repeat(100));
        assert_eq!(lines[0].chars().count(), LINE_CELLS_MAX / 2);
        assert!(lines.iter().all(|line| line.chars().map(cells).sum::<usize>() <= LINE_CELLS_MAX));
        assert_eq!(wrap("short words here"), vec!["short words here"]);
        assert_eq!(escape_xml("a\u{0}b<'"), "ab&lt;&apos;");
    }
}
