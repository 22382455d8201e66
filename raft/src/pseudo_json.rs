//! A reader for the relaxed JSON found in the app's `t_config` rows.
//!
//! The rows were written by hand for a Java stack and look like
//! `{'name':'匹配赛','interveningTime':120000}` or `{pk:[{'vc':207,'p':'android'}]}`:
//! strings in single or double quotes, object keys quoted either way or bare. Strict JSON
//! is a subset, so rows rewritten in plain JSON keep working.

use std::collections::BTreeMap;
use std::fmt;

/// A parsed value. Numbers are kept as `i64` (the rows only hold whole numbers) or as
/// `f64` when they have a fraction or exponent.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Value>),
    Object(BTreeMap<String, Value>),
}

impl Value {
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::List(_) => "a list",
            Value::Object(_) => "an object",
        }
    }
}

/// Where and why a text is not relaxed JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    /// Character offset of the problem.
    pub at: usize,
    pub message: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at character {}: {}", self.at, self.message)
    }
}

/// Nesting deeper than this is refused, so a hostile row cannot exhaust the stack.
const MAX_DEPTH: usize = 32;

pub fn parse(text: &str) -> Result<Value, SyntaxError> {
    let mut parser = Parser { chars: text.chars().collect(), at: 0 };
    let value = parser.value(0)?;
    parser.skip_space();
    if parser.at < parser.chars.len() {
        return Err(parser.error("unexpected text after the value"));
    }
    Ok(value)
}

struct Parser {
    chars: Vec<char>,
    at: usize,
}

impl Parser {
    fn error(&self, message: &str) -> SyntaxError {
        SyntaxError { at: self.at, message: message.to_string() }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(c) if c.is_whitespace()) {
            self.at += 1;
        }
    }

    fn expect(&mut self, wanted: char) -> Result<(), SyntaxError> {
        self.skip_space();
        if self.peek() == Some(wanted) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected '{wanted}'")))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        self.skip_space();
        match self.peek() {
            None => Err(self.error("expected a value, found the end")),
            Some('{') => self.object(depth),
            Some('[') => self.list(depth),
            Some(quote @ ('\'' | '"')) => Ok(Value::Str(self.string(quote)?)),
            Some(c) if c == '-' || c.is_ascii_digit() => self.number(),
            Some(c) if c.is_alphabetic() || c == '_' => {
                let word = self.word();
                match word.as_str() {
                    "true" => Ok(Value::Bool(true)),
                    "false" => Ok(Value::Bool(false)),
                    "null" => Ok(Value::Null),
                    _ => Err(self.error(&format!("unknown word '{word}'"))),
                }
            }
            Some(c) => Err(self.error(&format!("unexpected '{c}'"))),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        self.expect('{')?;
        let mut map = BTreeMap::new();
        self.skip_space();
        if self.peek() == Some('}') {
            self.at += 1;
            return Ok(Value::Object(map));
        }
        loop {
            self.skip_space();
            let key = match self.peek() {
                Some(quote @ ('\'' | '"')) => self.string(quote)?,
                Some(c) if c.is_alphanumeric() || c == '_' => self.word(),
                _ => return Err(self.error("expected a key")),
            };
            self.expect(':')?;
            let value = self.value(depth + 1)?;
            if map.insert(key.clone(), value).is_some() {
                return Err(self.error(&format!("key '{key}' appears twice")));
            }
            self.skip_space();
            match self.peek() {
                Some(',') => self.at += 1,
                Some('}') => {
                    self.at += 1;
                    return Ok(Value::Object(map));
                }
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
    }

    fn list(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        self.expect('[')?;
        let mut items = Vec::new();
        self.skip_space();
        if self.peek() == Some(']') {
            self.at += 1;
            return Ok(Value::List(items));
        }
        loop {
            items.push(self.value(depth + 1)?);
            self.skip_space();
            match self.peek() {
                Some(',') => self.at += 1,
                Some(']') => {
                    self.at += 1;
                    return Ok(Value::List(items));
                }
                _ => return Err(self.error("expected ',' or ']'")),
            }
        }
    }

    fn word(&mut self) -> String {
        let start = self.at;
        while matches!(self.peek(), Some(c) if c.is_alphanumeric() || c == '_') {
            self.at += 1;
        }
        self.chars[start..self.at].iter().collect()
    }

    fn string(&mut self, quote: char) -> Result<String, SyntaxError> {
        self.at += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some(c) if c == quote => {
                    self.at += 1;
                    return Ok(out);
                }
                Some('\\') => {
                    self.at += 1;
                    let escaped = match self.peek() {
                        Some('n') => '\n',
                        Some('t') => '\t',
                        Some('r') => '\r',
                        Some(c @ ('\\' | '/' | '\'' | '"')) => c,
                        _ => return Err(self.error("unsupported escape")),
                    };
                    out.push(escaped);
                    self.at += 1;
                }
                Some(c) => {
                    out.push(c);
                    self.at += 1;
                }
            }
        }
    }

    fn number(&mut self) -> Result<Value, SyntaxError> {
        let start = self.at;
        if self.peek() == Some('-') {
            self.at += 1;
        }
        let mut fractional = false;
        while let Some(c) = self.peek() {
            if c.is_ascii_digit() {
                self.at += 1;
            } else if matches!(c, '.' | 'e' | 'E' | '+') || (c == '-' && self.at > start) {
                fractional = true;
                self.at += 1;
            } else {
                break;
            }
        }
        let text: String = self.chars[start..self.at].iter().collect();
        if fractional {
            text.parse::<f64>()
                .map(Value::Float)
                .map_err(|_| SyntaxError { at: start, message: format!("bad number '{text}'") })
        } else {
            text.parse::<i64>()
                .map(Value::Int)
                .map_err(|_| SyntaxError { at: start, message: format!("bad or too large number '{text}'") })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_source_rows() {
        let v = parse("{'name':'匹配赛','interveningTime':120000,'endTime':600000}").unwrap();
        let Value::Object(map) = v else { panic!("not an object") };
        assert_eq!(map["name"], Value::Str("匹配赛".into()));
        assert_eq!(map["interveningTime"], Value::Int(120000));

        let v = parse("{pk:[{'vc':207,'p':'android'}]}").unwrap();
        let Value::Object(map) = v else { panic!("not an object") };
        let Value::List(items) = &map["pk"] else { panic!("not a list") };
        assert_eq!(items.len(), 1);

        assert_eq!(parse(r#" {"IN": ["PK"]} "#).unwrap(), parse("{'IN':['PK']}").unwrap());
    }

    #[test]
    fn reports_errors_with_a_position() {
        assert_eq!(parse("{'a':1,}").unwrap_err().at, 7);
        assert!(parse("{'a':1").is_err());
        assert!(parse("{'a':1} x").is_err());
        assert!(parse("{'a':1,'a':2}").unwrap_err().message.contains("twice"));
        assert!(parse("99999999999999999999").is_err());
        assert!(parse(&"[".repeat(100)).unwrap_err().message.contains("deeply"));
        assert!(parse("'abc").is_err());
    }
}
