//! Normalization for the heuristics: the text an attacker disguised, as a reader sees
//! it, with a map back to the original byte offsets.
//!
//! Case folding, whitespace collapse, removal of invisible characters (zero-width,
//! tag, variation selectors, bidi controls, soft hyphen), folding of confusables and
//! homoglyphs (Cyrillic and Greek look-alikes, fullwidth forms, mathematical
//! alphanumerics), typographic quotes and dashes to their ASCII forms ("don’t"
//! reads "don't") and, inside words that mix letters and digits, leetspeak.

/// Text after normalization, with the original offset of each byte.
pub(crate) struct Normalized {
    pub(crate) text: String,
    origin: Origin,
}

/// Where each normalized byte came from.
enum Origin {
    /// `[i]` is the original offset of normalized byte `i`; one more entry maps
    /// the end.
    Bytes(Vec<u32>),
    /// ASCII text, which only loses whitespace: stretches that map one to one,
    /// as (normalized offset, original offset) where each starts, and the
    /// original length (where the normalized end maps).
    Runs(Vec<(u32, u32)>, u32),
}

impl Normalized {
    /// Whether the text was ASCII (so the normalized text is too).
    pub(crate) fn is_ascii(&self) -> bool {
        matches!(self.origin, Origin::Runs(..))
    }

    /// The original offset of normalized byte `i` (`i` up to the normalized
    /// length, which maps to the original length).
    fn origin(&self, i: usize) -> Option<usize> {
        match &self.origin {
            Origin::Bytes(v) => v.get(i).map(|&o| o as usize),
            Origin::Runs(runs, end) => {
                if i > self.text.len() {
                    None
                } else if i == self.text.len() {
                    Some(*end as usize)
                } else {
                    let k = runs.partition_point(|&(n, _)| n as usize <= i);
                    let (n, o) = runs.get(k.checked_sub(1)?)?;
                    Some(*o as usize + (i - *n as usize))
                }
            }
        }
    }

    /// The original byte span of a normalized span; `original` is the text that was
    /// normalized.
    pub(crate) fn original_span(
        &self,
        original: &str,
        start: usize,
        end: usize,
    ) -> std::ops::Range<usize> {
        let s = self.origin(start).unwrap_or(0);
        // The span ends where the original character behind its last byte ends.
        let e = end
            .checked_sub(1)
            .and_then(|last| self.origin(last))
            .map_or(s, |o| {
                o + original
                    .get(o..)
                    .and_then(|r| r.chars().next())
                    .map_or(0, char::len_utf8)
            });
        s..e.max(s)
    }
}

impl Normalized {
    /// The normalization of the ROT13 of `original` (the text this is the
    /// normalization of), from this one: each byte that comes from an ASCII
    /// letter is rotated. Normalization decides only on the kind of each
    /// character (a letter, a leet character, a space), never on which letter it
    /// is, and an ASCII letter's byte is the letter lowered; ROT13 changes only
    /// ASCII letters, into ASCII letters. So `normalize(&rot13(original))` is
    /// this text with those bytes rotated, and the same map back.
    pub(crate) fn rot13(&self, original: &str) -> Self {
        let src = original.as_bytes();
        let rotate = |b: u8, from: usize| {
            if src.get(from).is_some_and(u8::is_ascii_alphabetic) {
                crate::codec::rot13(char::from(b)) as u8
            } else {
                b
            }
        };
        let out: Vec<u8> = match &self.origin {
            Origin::Bytes(v) => self
                .text
                .bytes()
                .zip(v)
                .map(|(b, &o)| rotate(b, o as usize))
                .collect(),
            Origin::Runs(runs, _) => {
                let mut out = self.text.as_bytes().to_vec();
                for (k, &(n, o)) in runs.iter().enumerate() {
                    let end = runs.get(k + 1).map_or(out.len(), |r| r.0 as usize);
                    let Some(to) = out.get_mut(n as usize..end) else {
                        continue;
                    };
                    match src.get(o as usize..o as usize + to.len()) {
                        // A stretch maps one to one: each byte from an ASCII
                        // letter is that letter lowered, rotated here without a
                        // branch (the compiler reads the stretch as vectors).
                        Some(from) => {
                            for (b, &c) in to.iter_mut().zip(from) {
                                let r = if *b >= b'n' {
                                    b.wrapping_sub(13)
                                } else {
                                    *b + 13
                                };
                                *b = if c.is_ascii_alphabetic() { r } else { *b };
                            }
                        }
                        None => {
                            for (j, b) in to.iter_mut().enumerate() {
                                *b = rotate(*b, o as usize + j);
                            }
                        }
                    }
                }
                out
            }
        };
        let origin = match &self.origin {
            Origin::Bytes(v) => Origin::Bytes(v.clone()),
            Origin::Runs(r, end) => Origin::Runs(r.clone(), *end),
        };
        Self {
            // Only ASCII letters changed, into ASCII letters.
            text: String::from_utf8(out).unwrap_or_default(),
            origin,
        }
    }
}

pub(crate) fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E007F}' | '\u{E0100}'..='\u{E01EF}')
}

/// Whether `c` ends a line: a line feed, a carriage return (alone or before a line
/// feed: the run of whitespace collapses to one line break), NEL or a Unicode line
/// or paragraph separator. A model reads each as a line break, and line-anchored
/// patterns (a fake conversation turn, an instruction header) need the lines.
fn is_line_end(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

/// Folds a typographic quote or dash to its ASCII form: the families are written
/// with `'`, `"` and `-`, and an English text set with curly quotes is otherwise
/// the same text.
fn fold_punctuation(c: char) -> Option<char> {
    Some(match c {
        '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}' | '\u{02BC}' => '\'',
        '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{201F}' => '"',
        '\u{2010}'..='\u{2015}' => '-',
        _ => return None,
    })
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
    if text.is_ascii() {
        normalize_ascii(text)
    } else {
        normalize_chars(text)
    }
}

/// What each ASCII byte is to [`normalize_ascii`].
const OTHER: u8 = 0;
const LETTER: u8 = 1;
const LEET: u8 = 2;
const WORD: u8 = 3;
const SPACE: u8 = 4;
const NEWLINE: u8 = 5;

const CLASS: [u8; 256] = {
    let mut t = [OTHER; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = if b.is_ascii_alphabetic() {
            LETTER
        } else if matches!(
            b,
            b'0' | b'1' | b'3' | b'4' | b'5' | b'7' | b'8' | b'9' | b'@' | b'$'
        ) {
            LEET
        } else if b.is_ascii_digit() || b == b'\'' {
            WORD
        } else if b == b'\n' || b == b'\r' {
            NEWLINE
        } else if matches!(b, b' ' | b'\t' | b'\x0B' | b'\x0C') {
            SPACE
        } else {
            OTHER
        };
        c += 1;
    }
    t
};

/// The same as [`normalize_chars`] for ASCII text, in one pass over the bytes with
/// a table: nothing to fold but case and leetspeak, nothing invisible, and the map
/// back is a list of stretches (only whitespace is dropped).
///
/// The text up to its first whitespace that is dropped or folded (a space
/// first, two in a row, a tab, a carriage return, a vertical tab or form feed)
/// loses none: it is copied lowercased, 64 bytes at a time, and only its words
/// with a leet character are read one at a time. So is each stretch between two
/// such (the paragraphs after the first, past their blank lines).
fn normalize_ascii(text: &str) -> Normalized {
    let b = text.as_bytes();
    let mut out = vec![0u8; b.len() + 8];
    let mut o = 0;
    let mut runs: Vec<(u32, u32)> = vec![(0, 0)];
    // A byte was dropped: the next one kept starts a stretch.
    let mut moved = false;
    // The text starts as after a space (one leading space is dropped).
    let (mut last_space, mut last_newline) = (true, false);
    // The word being copied: where it starts in `out`, its letters and leet
    // characters.
    let (mut word, mut letters, mut leety) = (usize::MAX, 0usize, 0usize);
    let end_word = |out: &mut [u8], word: &mut usize, o: usize, letters: usize, leety: usize| {
        if *word != usize::MAX {
            unleet_word(&mut out[*word..o], letters, leety);
            *word = usize::MAX;
        }
    };
    let mut i = 0;
    // A word after whitespace (or the text's first), past the irregular
    // whitespace found last, starts a stretch copied whole up to the next one
    // (each stretch is looked for once: the search is linear over the text).
    let mut next_stretch = 0;
    while i < b.len() {
        let c = b[i];
        let class = CLASS[c as usize];
        if i >= next_stretch && last_space && class < SPACE {
            let rest = &b[i..];
            let (q, n) = stretch(rest);
            next_stretch = i + q + 1;
            if n > 0 {
                if moved {
                    runs.push((o as u32, i as u32));
                    moved = false;
                }
                copy_lowered(&mut out[o..o + n], &rest[..n]);
                (o, i) = (o + n, i + n);
                last_newline = rest[n - 1] == b'\n';
                // `last_space` stays: the stretch ends after a space or line end
                // (or at the end of the text).
                continue;
            }
        }
        if class == LETTER {
            // A run of letters, up to eight at a time (what the general case below
            // does for each of them: no stretch, no word, no leet character to
            // note after the first), with the single spaces after a letter when
            // the word they end has no leet character (ending it changes nothing:
            // the space is copied, and the next word starts).
            last_space = false;
            last_newline = false;
            if moved {
                runs.push((o as u32, i as u32));
                moved = false;
            }
            if word == usize::MAX {
                (word, letters, leety) = (o, 0, 0);
            }
            let (k, spaces) = match b.get(i..i + 8).and_then(|c| <[u8; 8]>::try_from(c).ok()) {
                Some(chunk) => {
                    use super::swar;
                    let x = u64::from_le_bytes(chunk);
                    let l = swar::letters(x);
                    let spaces = if leety == 0 {
                        let y = x & !swar::HI;
                        swar::at_least(y, b' ') & !swar::at_least(y, b' ' + 1) & !x & (l << 8)
                    } else {
                        0
                    };
                    // Letters lowered by their 0x20 bit (the other bytes too,
                    // written past the run; a space is its own 0x20 bit).
                    let (k, lower) = (swar::run(l | spaces), x | (0x20 * swar::LO));
                    // `out` has eight bytes of room past the text (o <= i); the
                    // bytes after the run are written again or cut off.
                    out[o..o + 8].copy_from_slice(&lower.to_le_bytes());
                    (k, swar::first(spaces, k))
                }
                None => {
                    out[o] = c.to_ascii_lowercase();
                    (1, 0)
                }
            };
            if spaces == 0 {
                letters += k;
            } else {
                // The last space copied: the words before it ended, the one after
                // it (if the run goes on) is the word being copied.
                let last = (63 - spaces.leading_zeros() as usize) / 8;
                if last + 1 == k {
                    word = usize::MAX;
                    last_space = true;
                } else {
                    (word, letters, leety) = (o + last + 1, k - last - 1, 0);
                }
            }
            o += k;
            i += k;
            continue;
        }
        i += 1;
        if class >= SPACE {
            end_word(&mut out, &mut word, o, letters, leety);
            if class == NEWLINE && !last_newline {
                if last_space && o > 0 && out[o - 1] == b' ' {
                    o -= 1;
                    if runs.len() > 1 && runs[runs.len() - 1].0 as usize == o {
                        runs.pop();
                    }
                    moved = true;
                }
                if moved {
                    runs.push((o as u32, (i - 1) as u32));
                    moved = false;
                }
                out[o] = b'\n';
                o += 1;
                last_newline = true;
            } else if !last_space {
                if moved {
                    runs.push((o as u32, (i - 1) as u32));
                    moved = false;
                }
                out[o] = b' ';
                o += 1;
            } else {
                moved = true;
            }
            last_space = true;
            continue;
        }
        last_space = false;
        last_newline = false;
        if moved {
            runs.push((o as u32, (i - 1) as u32));
            moved = false;
        }
        if class == OTHER {
            end_word(&mut out, &mut word, o, letters, leety);
        } else if word == usize::MAX {
            (word, letters, leety) = (o, 0, 0);
        }
        letters += usize::from(class == LETTER);
        leety += usize::from(class == LEET);
        out[o] = c.to_ascii_lowercase();
        o += 1;
    }
    end_word(&mut out, &mut word, o, letters, leety);
    out.truncate(o);
    Normalized {
        // Only ASCII bytes were written.
        text: String::from_utf8(out).unwrap_or_default(),
        origin: Origin::Runs(runs, text.len() as u32),
    }
}

/// Of ASCII `b`: where its first irregular whitespace is ([`irregular`]), and
/// how much of it [`normalize_ascii`] copies whole: up to the byte after the
/// last space or line end before that, or all of it (the words it holds end in
/// it).
fn stretch(b: &[u8]) -> (usize, usize) {
    let first = irregular(b);
    let plain = if first == b.len() {
        b.len()
    } else {
        b[..first]
            .iter()
            .rposition(|&c| c == b' ' || c == b'\n')
            .map_or(0, |p| p + 1)
    };
    (first, plain)
}

/// Copies ASCII `from` into `to` lowercased, its leet words mapped.
fn copy_lowered(to: &mut [u8], from: &[u8]) {
    to.copy_from_slice(from);
    to.make_ascii_lowercase();
    unleet(to);
}

/// Where the first whitespace of ASCII `b` is that [`normalize_ascii`] drops or
/// folds: a space that starts it, two whitespace bytes in a row, a tab, a
/// carriage return, a vertical tab or a form feed (`b.len()` when none is). 64
/// bytes at a time, with no branch per byte.
fn irregular(b: &[u8]) -> usize {
    let space = |c: u8| c == b' ' || c == b'\n';
    let odd = |c: u8| matches!(c, b'\t' | b'\r' | b'\x0B' | b'\x0C');
    let at = |i: usize| {
        let next = b.get(i + 1).copied().unwrap_or(b'x');
        odd(b[i]) || (space(b[i]) && space(next))
    };
    if b.first() == Some(&b' ') {
        return 0;
    }
    let mut c = 0;
    while c + 65 <= b.len() {
        let (Ok(x), Ok(y)) = (
            <&[u8; 64]>::try_from(&b[c..c + 64]),
            <&[u8; 64]>::try_from(&b[c + 1..c + 65]),
        ) else {
            break;
        };
        let found = (0..64).fold(false, |any, k| {
            any | odd(x[k]) | (space(x[k]) & space(y[k]))
        });
        if found {
            break;
        }
        c += 64;
    }
    (c..b.len()).find(|&i| at(i)).unwrap_or(b.len())
}

/// Maps the leet characters of an ASCII word with `letters` letters and `leety`
/// leet characters, when it mixes them (three or more together).
fn unleet_word(word: &mut [u8], letters: usize, leety: usize) {
    if letters > 0 && leety > 0 && letters + leety >= 3 {
        for w in word {
            *w = leet(*w as char).map_or(*w, |l| l as u8);
        }
    }
}

/// Maps the leet characters of each word of lowercased ASCII `b` that
/// [`normalize_ascii`] maps them in (a run of letters, leet characters, other
/// digits and apostrophes with a letter, a leet character and three of the two
/// together), as its general pass does.
///
/// 64 bytes at a time: a block without a digit, `@` or `$` is passed over whole;
/// in the others, bitmasks of the block's word bytes, letters and leet characters
/// find the words that hold both a letter and a leet character (the only ones
/// that may be mapped), without a branch per byte. A word that goes on past
/// either end of its block is read byte by byte ([`unleet_at`]).
fn unleet(b: &mut [u8]) {
    // The bytes before it were looked at (the last word read byte by byte).
    let mut done = 0;
    for c in (0..b.len()).step_by(64) {
        let end = (c + 64).min(b.len());
        // Compared, not looked up, so that the block is read as vectors: any
        // digit, `@` or `$` (a few more than the leet characters) sends it on.
        if !super::swar::any(&b[c..end], |x| {
            x.wrapping_sub(b'0') < 10 || x == b'@' || x == b'$'
        }) {
            continue;
        }
        let (mut w, a, l) = block_masks(&b[c..end]);
        if done > c {
            w &= u64::MAX.checked_shl((done - c).min(64) as u32).unwrap_or(0);
        }
        // A word at the block's start that began before it (in a block passed
        // over, or one whose last word was not read), and one at its end that
        // may go on: read byte by byte, from their true ends.
        if w & 1 == 1 && c > 0 && in_word(b[c - 1]) {
            done = unleet_at(b, c);
            w &= u64::MAX.checked_shl((done - c).min(64) as u32).unwrap_or(0);
        }
        if w >> 63 == 1 {
            let top = (!w).leading_zeros();
            done = unleet_at(b, end - 1);
            w &= !(u64::MAX << (64 - top));
        }
        // The runs of `w` with a letter and with a leet character: adding a
        // run's letters to it carries out of its top, into the byte after it.
        let (a, l) = (a & w, l & w);
        let mut both = w.wrapping_add(a) & w.wrapping_add(l) & !w;
        while both != 0 {
            // The run ends before bit `p` and starts past the last byte before
            // it that is not in a word.
            let p = both.trailing_zeros();
            both &= both - 1;
            let below = (1u64 << p) - 1;
            let gap = !w & below;
            let run = below & !((1u64 << (64 - gap.leading_zeros())) - 1);
            let leety = (l & run).count_ones();
            if (a & run).count_ones() + leety >= 3 {
                let mut m = l & run;
                while m != 0 {
                    let k = c + m.trailing_zeros() as usize;
                    m &= m - 1;
                    b[k] = leet(char::from(b[k])).map_or(b[k], |x| x as u8);
                }
            }
        }
    }
}

/// Bit `k` of each mask for byte `k` of `block` (at most 64 bytes): whether it is
/// in a word (a letter, a digit, `@`, `$` or an apostrophe), a letter, a leet
/// character. Each class is first a byte per byte (compared, so that the loop is
/// vectors), then gathered eight bytes at a time.
fn block_masks(block: &[u8]) -> (u64, u64, u64) {
    let mut x = [0u8; 64];
    x[..block.len()].copy_from_slice(block);
    let (mut w, mut a, mut l) = ([0u8; 64], [0u8; 64], [0u8; 64]);
    for k in 0..64 {
        let c = x[k];
        let digit = c.wrapping_sub(b'0') < 10;
        let letter = (c | 0x20).wrapping_sub(b'a') < 26;
        let sign = (c == b'@') | (c == b'$');
        w[k] = u8::from(letter | digit | sign | (c == b'\''));
        a[k] = u8::from(letter);
        l[k] = u8::from(digit & (c != b'2') & (c != b'6') | sign);
    }
    let gather = |t: &[u8; 64]| {
        (0..8).fold(0u64, |m, j| {
            let mut e = [0u8; 8];
            e.copy_from_slice(&t[8 * j..8 * j + 8]);
            m | super::swar::gather(u64::from_le_bytes(e) << 7) << (8 * j)
        })
    };
    (gather(&w), gather(&a), gather(&l))
}

/// Whether ASCII byte `c` is in a word [`unleet`] reads: a letter, a digit, `@`,
/// `$` or an apostrophe.
fn in_word(c: u8) -> bool {
    matches!(CLASS[usize::from(c)], LETTER | LEET | WORD)
}

/// Maps the leet characters of the word of lowercased ASCII `b` that byte `i`
/// is in, when it mixes them with letters as [`unleet`] says; where the word
/// ends (`i` when the byte is in none).
fn unleet_at(b: &mut [u8], i: usize) -> usize {
    if !in_word(b[i]) {
        return i;
    }
    let s = b[..i]
        .iter()
        .rposition(|&x| !in_word(x))
        .map_or(0, |p| p + 1);
    let e = b[i..]
        .iter()
        .position(|&x| !in_word(x))
        .map_or(b.len(), |p| i + p);
    let letters = b[s..e]
        .iter()
        .filter(|&&x| CLASS[usize::from(x)] == LETTER)
        .count();
    let leety = b[s..e]
        .iter()
        .filter(|&&x| CLASS[usize::from(x)] == LEET)
        .count();
    unleet_word(&mut b[s..e], letters, leety);
    e
}

fn normalize_chars(text: &str) -> Normalized {
    let b = text.as_bytes();
    let mut n = Chars {
        text: Vec::with_capacity(text.len()),
        origin: Vec::with_capacity(text.len() + 1),
    };
    let mut last_space = true;
    let mut last_newline = false;
    // Words are processed as units so leetspeak is only undone inside words that mix
    // letters and leet digits ("1gn0r3"), never in plain numbers ("2024"): each is
    // written as it is read, and its leet characters folded when it ends.
    let mut word = Word::NONE;
    let mut i = 0;
    while i < b.len() {
        let (orig, len) = if b[i].is_ascii() {
            if b[i].is_ascii_alphabetic() {
                // A run of ASCII letters, eight bytes at a time: lowered, each byte
                // its own origin, in the word being read.
                let mut k = 0;
                loop {
                    let r = super::swar::run(super::swar::letters(super::swar::load(b, i + k)));
                    k += r;
                    if r < 8 {
                        break;
                    }
                }
                word.begin(n.text.len());
                n.text
                    .extend(b[i..i + k].iter().map(u8::to_ascii_lowercase));
                n.origin.extend((i..i + k).map(|o| o as u32));
                word.letters += k;
                last_space = false;
                last_newline = false;
                i += k;
                continue;
            }
            (char::from(b[i]), 1)
        } else {
            match text.get(i..).and_then(|t| t.chars().next()) {
                Some(c) => (c, c.len_utf8()),
                None => break,
            }
        };
        let at = i as u32;
        i += len;
        let c = if orig.is_ascii() {
            orig
        } else if is_invisible(orig) {
            continue;
        } else {
            fold_punctuation(orig)
                .or_else(|| fold_confusable(orig))
                .unwrap_or(orig)
        };
        if c.is_whitespace() {
            word.end(&mut n);
            // Runs of whitespace collapse to one space, or to one newline when they
            // hold a line break (line-anchored patterns need lines).
            if is_line_end(c) && !last_newline {
                if last_space && n.text.last() == Some(&b' ') {
                    n.text.pop();
                    n.origin.pop();
                }
                n.push('\n', at);
                last_space = true;
                last_newline = true;
            } else if !last_space {
                n.push(' ', at);
                last_space = true;
            }
            continue;
        }
        last_space = false;
        last_newline = false;
        let letter = c.is_alphabetic();
        let leety = leet(c).is_some();
        if letter || leety || c == '\'' || c.is_alphanumeric() {
            word.begin(n.text.len());
            word.letters += usize::from(letter);
            word.leety += usize::from(leety);
        } else {
            word.end(&mut n);
        }
        n.push_lower(c, at);
    }
    word.end(&mut n);
    n.origin.push(text.len() as u32);
    Normalized {
        // Whole characters were written.
        text: String::from_utf8(n.text).unwrap_or_default(),
        origin: Origin::Bytes(n.origin),
    }
}

/// The general path's output as it is built.
struct Chars {
    text: Vec<u8>,
    origin: Vec<u32>,
}

impl Chars {
    fn push(&mut self, c: char, at: u32) {
        let mut buf = [0u8; 4];
        let bytes = c.encode_utf8(&mut buf).as_bytes();
        self.text.extend_from_slice(bytes);
        self.origin.extend(std::iter::repeat_n(at, bytes.len()));
    }

    fn push_lower(&mut self, c: char, at: u32) {
        if c.is_ascii() {
            self.text.push(c.to_ascii_lowercase() as u8);
            self.origin.push(at);
        } else {
            for l in c.to_lowercase() {
                self.push(l, at);
            }
        }
    }
}

/// The word being read: where it starts in the normalized text (`usize::MAX`: no
/// word), and how many of its characters are letters and leet characters.
struct Word {
    start: usize,
    letters: usize,
    leety: usize,
}

impl Word {
    const NONE: Self = Self {
        start: usize::MAX,
        letters: 0,
        leety: 0,
    };

    /// Starts a word at `at` in the normalized text, unless one is being read.
    fn begin(&mut self, at: usize) {
        if self.start == usize::MAX {
            *self = Self {
                start: at,
                letters: 0,
                leety: 0,
            };
        }
    }

    /// Ends the word: a word that mixes letters and leet characters (three or
    /// more in all) has its leet characters, all ASCII, folded in place.
    fn end(&mut self, n: &mut Chars) {
        if self.start == usize::MAX {
            return;
        }
        if self.letters > 0 && self.leety > 0 && self.letters + self.leety >= 3 {
            for c in &mut n.text[self.start..] {
                if let Some(l) = leet(char::from(*c)) {
                    *c = l as u8;
                }
            }
        }
        *self = Self::NONE;
    }
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
        let span = n.original_span(text, at, at + "ignore".len());
        assert_eq!(&text[span], "1gn0r3");
    }

    #[test]
    fn typographic_quotes_and_dashes_read_as_ascii() {
        let text =
            "Don\u{2019}t \u{201C}obey\u{201D} \u{2018}rules\u{2019} \u{2014} ever\u{2013}after";
        let n = normalize(text);
        assert_eq!(n.text, "don't \"obey\" 'rules' - ever-after");
        let at = n.text.find("don't").unwrap();
        let span = n.original_span(text, at, at + "don't".len());
        assert_eq!(&text[span], "Don\u{2019}t");
        // The same words as the ASCII text, so the same features.
        assert_eq!(
            n.text,
            normalize("Don't \"obey\" 'rules' - ever-after").text
        );
    }

    #[test]
    fn numbers_and_other_scripts_are_left_alone() {
        assert_eq!(
            normalize("Call 555 0199 in 2024").text,
            "call 555 0199 in 2024"
        );
        assert_eq!(normalize("می‌خواهم").text, "میخواهم");
    }

    #[test]
    fn the_ascii_path_agrees_with_the_general_one() {
        // Texts over the bytes that matter.
        const BYTES: &[u8] = b"aZ01926347@$' \t\n\r\x0b\x0c.-:<|\x1b";
        // Runs of letters longer than eight, and the bytes beside the letters.
        const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzAMZ@[`{ \n1";
        // Long stretches with single spaces and line ends only (copied whole up
        // to the first irregular whitespace, if any).
        const PLAIN: &[u8] = b"abcdefghijklmnopqrstuvwxyzAMZ0192634@$'.-:< \n";
        // Long stretches between irregular whitespace (each copied whole).
        const STRETCHES: &[u8] = b"abcdefghijklmnopqrstuvwxyzAMZ0134@$' \n\t";
        // Long words with a rare leet character: blocks of 64 bytes without one,
        // and words that cross from such a block into one with.
        const SPARSE: &[u8] =
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz 4";
        let texts = crate::scan::testgen::texts(BYTES, 40, 20000)
            .chain(crate::scan::testgen::texts(LETTERS, 120, 5000))
            .chain(crate::scan::testgen::texts(PLAIN, 400, 5000))
            .chain(crate::scan::testgen::texts(STRETCHES, 600, 5000))
            .chain(crate::scan::testgen::texts(SPARSE, 400, 5000));
        for s in texts {
            let (a, b) = (normalize_ascii(&s), normalize_chars(&s));
            assert_eq!(a.text, b.text, "{s:?}");
            for i in 0..=a.text.len() + 1 {
                assert_eq!(a.origin(i), b.origin(i), "{s:?} at {i}");
            }
        }
    }

    /// The normalization of a text's ROT13 is its normalization with the bytes
    /// from ASCII letters rotated: the same text and the same map back.
    #[test]
    fn rot13_of_the_normalization_is_the_normalization_of_rot13() {
        const BYTES: &[u8] = b"aZnM01926347@$' \t\n\r\x0b.-:<|";
        const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzAMNZ@[`{ \n1";
        // Pieces with characters that fold to ASCII letters or whitespace, lose
        // case, or vanish: the Kelvin sign lowers to an ASCII `k`.
        const PIECES: [&str; 14] = [
            "a",
            "N",
            "1",
            "@",
            " ",
            "\n",
            "\u{430}",
            "\u{212A}",
            "\u{130}",
            "\u{FF21}",
            "\u{200B}",
            "\u{2019}",
            "\u{3000}",
            "\u{1D400}",
        ];
        let mixed = crate::scan::testgen::strings(b"0123456789abcd", 40, 20000).map(|ix| {
            ix.iter()
                .map(|&i| PIECES[usize::from(i - b'0') % PIECES.len()])
                .collect::<String>()
        });
        let texts = crate::scan::testgen::texts(BYTES, 40, 20000)
            .chain(crate::scan::testgen::texts(LETTERS, 120, 5000))
            .chain(mixed);
        let mut non_ascii = 0;
        for s in texts {
            let n = normalize(&s);
            non_ascii += usize::from(!n.is_ascii());
            let (a, b) = (n.rot13(&s), normalize(&crate::codec::rot13_str(&s)));
            assert_eq!(a.text, b.text, "{s:?}");
            assert_eq!(a.is_ascii(), b.is_ascii(), "{s:?}");
            for i in 0..=a.text.len() + 1 {
                assert_eq!(a.origin(i), b.origin(i), "{s:?} at {i}");
            }
        }
        assert!(non_ascii > 15000, "{non_ascii}");
    }

    /// The general path as it was (a character at a time, each word buffered
    /// and written when it ends): the path with ASCII letter runs and words
    /// folded in place gives the same text and origins.
    fn reference(text: &str) -> Normalized {
        let mut n = RefChars {
            text: String::with_capacity(text.len()),
            origin: Vec::with_capacity(text.len() + 1),
        };
        let mut last_space = true;
        let mut last_newline = false;
        // Words are processed as units so leetspeak is only undone inside words that mix
        // letters and leet digits ("1gn0r3"), never in plain numbers ("2024"). Each entry:
        // original offset, character after folding.
        let mut word = RefWord::default();
        for (i, orig) in text.char_indices() {
            let c = if orig.is_ascii() {
                orig
            } else if is_invisible(orig) {
                continue;
            } else {
                fold_punctuation(orig)
                    .or_else(|| fold_confusable(orig))
                    .unwrap_or(orig)
            };
            if c.is_whitespace() {
                ref_flush(&mut word, &mut n);
                // Runs of whitespace collapse to one space, or to one newline when they
                // hold a line break (line-anchored patterns need lines).
                if is_line_end(c) && !last_newline {
                    if last_space && n.text.ends_with(' ') {
                        n.text.pop();
                        n.origin.pop();
                    }
                    n.push('\n', i as u32);
                    last_space = true;
                    last_newline = true;
                } else if !last_space {
                    n.push(' ', i as u32);
                    last_space = true;
                }
                continue;
            }
            last_space = false;
            last_newline = false;
            let letter = c.is_alphabetic();
            let leety = leet(c).is_some();
            if letter || leety || c == '\'' || c.is_alphanumeric() {
                word.chars.push((i as u32, c));
                word.letters += usize::from(letter);
                word.leety += usize::from(leety);
            } else {
                ref_flush(&mut word, &mut n);
                n.push_lower(c, i as u32);
            }
        }
        ref_flush(&mut word, &mut n);
        n.origin.push(text.len() as u32);
        Normalized {
            text: n.text,
            origin: Origin::Bytes(n.origin),
        }
    }

    /// The general path's output as it is built.
    struct RefChars {
        text: String,
        origin: Vec<u32>,
    }

    impl RefChars {
        fn push(&mut self, c: char, at: u32) {
            for _ in 0..c.len_utf8() {
                self.origin.push(at);
            }
            self.text.push(c);
        }

        fn push_lower(&mut self, c: char, at: u32) {
            if c.is_ascii() {
                self.text.push(c.to_ascii_lowercase());
                self.origin.push(at);
            } else {
                for l in c.to_lowercase() {
                    self.push(l, at);
                }
            }
        }
    }

    /// The word being read: each character's original offset and the character after
    /// folding, and how many are letters and leet characters.
    #[derive(Default)]
    struct RefWord {
        chars: Vec<(u32, char)>,
        letters: usize,
        leety: usize,
    }

    fn ref_flush(word: &mut RefWord, n: &mut RefChars) {
        if word.chars.is_empty() {
            return;
        }
        let (letters, leety) = (word.letters, word.leety);
        let undo_leet = letters > 0 && leety > 0 && letters + leety >= 3;
        for &(at, c) in &word.chars {
            let c = if undo_leet { leet(c).unwrap_or(c) } else { c };
            n.push_lower(c, at);
        }
        word.chars.clear();
        (word.letters, word.leety) = (0, 0);
    }

    #[test]
    fn general_path_is_the_character_loop_s() {
        const CHARS: [char; 32] = [
            'a', 'B', 'z', 'e', ' ', ' ', '\n', '\t', '0', '1', '3', '4', '@', '$', '\'', '.', '-',
            'é', 'а', 'Σ', 'İ', '日', '\u{200B}', '\u{FF14}', '\u{2019}', '\u{2014}', '\u{A0}',
            '\u{3000}', 'ß', 'x', 'K', '\u{212A}',
        ];
        let mut count = 0;
        for bytes in crate::scan::testgen::strings(b"0123456789abcdefghijklmnopqrstuv", 48, 30_000)
        {
            let text: String = bytes
                .iter()
                .map(|&b| CHARS[usize::from(b) % CHARS.len()])
                .chain(std::iter::once('\u{e9}'))
                .collect();
            let (got, want) = (normalize_chars(&text), reference(&text));
            assert_eq!(got.text, want.text, "{text:?}");
            let (Origin::Bytes(g), Origin::Bytes(w)) = (&got.origin, &want.origin) else {
                panic!("byte origins");
            };
            assert_eq!(g, w, "{text:?}");
            count += usize::from(text.contains(['1', '3', '4']));
        }
        assert!(count > 10_000);
    }
}
