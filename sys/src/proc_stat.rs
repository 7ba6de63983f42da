//! `/proc/PID/stat` (proc(5)), a field at a time. The command's name (field 2) is the
//! process's own choice (prctl PR_SET_NAME or /proc/PID/comm: any bytes but NUL, not always
//! UTF-8, parentheses and spaces included), and the kernel writes it as it is: the line is
//! taken as bytes and the other fields counted from its last `)`.

/// Field `number` of the stat line `stat`, numbered as proc(5) does (3, the state, is the first
/// after the name); None for fields 1 and 2 and past the line's end.
pub fn field(stat: &[u8], number: usize) -> Option<&str> {
    let after_name = &stat[stat.iter().rposition(|b| *b == b')')? + 1..];
    std::str::from_utf8(after_name)
        .ok()?
        .split_ascii_whitespace()
        .nth(number.checked_sub(3)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_count_from_the_names_last_parenthesis() {
        let stat = b"4242 (a) b) (c\xff) S 1 4242 0 0 -1 4194560 9 0 0 0 0 0 0 0 20 0 1 0 123\n";
        assert_eq!(field(stat, 3), Some("S"));
        assert_eq!(field(stat, 4), Some("1"));
        assert_eq!(field(stat, 22), Some("123"));
        assert_eq!(field(stat, 23), None);
        assert_eq!(field(stat, 2), None);
        assert_eq!(field(b"garbage", 3), None);
    }
}
