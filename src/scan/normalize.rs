//! Normalization for the heuristics: the text an attacker disguised, as a reader sees
//! it, with a map back to the original byte offsets.
//!
//! Case folding, whitespace collapse, removal of invisible characters (zero-width,
//! tag, variation selectors, bidi controls, soft hyphen), folding of confusables and
//! homoglyphs (Cyrillic and Greek look-alikes, fullwidth forms, mathematical
//! alphanumerics) and, inside words that mix letters and digits, leetspeak.

/// Text after normalization, with the original offset of each byte.
pub(crate) struct Normalized {
    pub(crate) text: String,
    /// `origin[i]` is the byte offset in the original text of normalized byte `i`;
    /// one more entry maps the end.
    origin: Vec<u32>,
    /// `ends[i]` is where the original character behind normalized byte `i` ends.
    ends: Vec<u32>,
}

impl Normalized {
    /// The original byte span of a normalized span.
    pub(crate) fn original_span(&self, start: usize, end: usize) -> std::ops::Range<usize> {
        let s = self.origin.get(start).copied().unwrap_or(0) as usize;
        let e = end
            .checked_sub(1)
            .and_then(|last| self.ends.get(last))
            .map_or(s, |&e| e as usize);
        s..e.max(s)
    }
}

pub(crate) fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E007F}' | '\u{E0100}'..='\u{E01EF}')
}

/// Folds a confusable character to the ASCII letter it imitates.
pub(crate) fn fold_confusable(c: char) -> Option<char> {
    let cp = c as u32;
    // Fullwidth ASCII.
    if (0xFF01..=0xFF5E).contains(&cp) {
        return char::from_u32(cp - 0xFF01 + 0x21);
    }
    // Mathematical alphanumeric letters: styles of 52 letters from U+1D400.
    if (0x1D400..=0x1D6A3).contains(&cp) {
        let i = (cp - 0x1D400) % 52;
        return Some(if i < 26 {
            (b'A' + i as u8) as char
        } else {
            (b'a' + (i - 26) as u8) as char
        });
    }
    // Enclosed and circled letters.
    if (0x24B6..=0x24CF).contains(&cp) {
        return char::from_u32(cp - 0x24B6 + u32::from(b'A'));
    }
    if (0x24D0..=0x24E9).contains(&cp) {
        return char::from_u32(cp - 0x24D0 + u32::from(b'a'));
    }
    Some(match c {
        'а' | 'ɑ' | 'α' => 'a',
        'А' | 'Α' => 'A',
        'В' | 'Β' => 'B',
        'с' | 'ϲ' => 'c',
        'С' | 'Ϲ' => 'C',
        'ԁ' => 'd',
        'е' | 'ε' | 'ҽ' => 'e',
        'Е' | 'Ε' => 'E',
        'ɡ' => 'g',
        'һ' => 'h',
        'Н' | 'Η' => 'H',
        'і' | 'ı' | 'ι' | 'ӏ' => 'i',
        'І' | 'Ι' | 'Ӏ' => 'I',
        'ј' => 'j',
        'Ј' => 'J',
        'κ' | 'к' => 'k',
        'К' | 'Κ' => 'K',
        'М' | 'Μ' => 'M',
        'ո' => 'n',
        'Ν' => 'N',
        'о' | 'ο' | 'օ' => 'o',
        'О' | 'Ο' => 'O',
        'р' | 'ρ' => 'p',
        'Р' | 'Ρ' => 'P',
        'ԛ' => 'q',
        'ѕ' => 's',
        'Ѕ' => 'S',
        'т' | 'τ' => 't',
        'Т' | 'Τ' => 'T',
        'υ' | 'ս' => 'u',
        'ν' | 'ѵ' => 'v',
        'ԝ' | 'ѡ' => 'w',
        'х' | 'χ' => 'x',
        'Х' | 'Χ' => 'X',
        'у' | 'γ' => 'y',
        'У' | 'Υ' => 'Y',
        'Ζ' => 'Z',
        _ => return None,
    })
}

fn leet(c: char) -> Option<char> {
    Some(match c {
        '0' => 'o',
        '1' => 'i',
        '3' => 'e',
        '4' | '@' => 'a',
        '5' | '$' => 's',
        '7' => 't',
        '8' => 'b',
        '9' => 'g',
        _ => return None,
    })
}

/// Normalizes `text` (see the module docs).
pub(crate) fn normalize(text: &str) -> Normalized {
    let mut n = Normalized {
        text: String::with_capacity(text.len()),
        origin: Vec::with_capacity(text.len() + 1),
        ends: Vec::with_capacity(text.len()),
    };
    let mut last_space = true;
    let mut last_newline = false;
    // Words are processed as units so leetspeak is only undone inside words that mix
    // letters and leet digits ("1gn0r3"), never in plain numbers ("2024"). Each entry:
    // original offset, original length, character after folding.
    let mut word: Vec<(u32, u8, char)> = Vec::new();
    for (i, orig) in text.char_indices() {
        let len = orig.len_utf8() as u8;
        let c = if orig.is_ascii() {
            orig
        } else if is_invisible(orig) {
            continue;
        } else {
            fold_confusable(orig).unwrap_or(orig)
        };
        if c.is_whitespace() {
            flush(&mut word, &mut n);
            // Runs of whitespace collapse to one space, or to one newline when they
            // hold a line break (line-anchored patterns need lines).
            if c == '\n' && !last_newline {
                if last_space && n.text.ends_with(' ') {
                    n.text.pop();
                    n.origin.pop();
                    n.ends.pop();
                }
                n.push('\n', i as u32, len);
                last_space = true;
                last_newline = true;
            } else if !last_space {
                n.push(' ', i as u32, len);
                last_space = true;
            }
            continue;
        }
        last_space = false;
        last_newline = false;
        if c.is_alphanumeric() || leet(c).is_some() || c == '\'' {
            word.push((i as u32, len, c));
        } else {
            flush(&mut word, &mut n);
            n.push_lower(c, i as u32, len);
        }
    }
    flush(&mut word, &mut n);
    n.origin.push(text.len() as u32);
    n
}

impl Normalized {
    fn push(&mut self, c: char, at: u32, len: u8) {
        let mut buf = [0u8; 4];
        for _ in 0..c.encode_utf8(&mut buf).len() {
            self.origin.push(at);
            self.ends.push(at + u32::from(len));
        }
        self.text.push(c);
    }

    fn push_lower(&mut self, c: char, at: u32, len: u8) {
        if c.is_ascii() {
            self.text.push(c.to_ascii_lowercase());
            self.origin.push(at);
            self.ends.push(at + u32::from(len));
        } else {
            for l in c.to_lowercase() {
                self.push(l, at, len);
            }
        }
    }
}

fn flush(word: &mut Vec<(u32, u8, char)>, n: &mut Normalized) {
    if word.is_empty() {
        return;
    }
    let letters = word.iter().filter(|(_, _, c)| c.is_alphabetic()).count();
    let leety = word.iter().filter(|(_, _, c)| leet(*c).is_some()).count();
    let undo_leet = letters > 0 && leety > 0 && letters + leety >= 3;
    for &(at, len, c) in word.iter() {
        let c = if undo_leet { leet(c).unwrap_or(c) } else { c };
        n.push_lower(c, at, len);
    }
    word.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_disguises_and_maps_spans_back() {
        let text = "Plеаsе  1gn0r3\u{200B} аll  ΡREVIOUS";
        let n = normalize(text);
        assert_eq!(n.text, "please ignore all previous");
        let at = n.text.find("ignore").unwrap();
        let span = n.original_span(at, at + "ignore".len());
        assert_eq!(&text[span], "1gn0r3");
    }

    #[test]
    fn numbers_and_other_scripts_are_left_alone() {
        assert_eq!(
            normalize("Call 555 0199 in 2024").text,
            "call 555 0199 in 2024"
        );
        assert_eq!(normalize("می‌خواهم").text, "میخواهم");
    }
}
