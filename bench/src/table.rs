//! The output table: rows, their units, and the check of figures against their DESIGN.md targets.

use std::fmt;
use std::io::Write;

/// The unit a figure is reported in. Time units are "lower is better", rates "higher is better".
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Unit {
    /// Milliseconds per operation.
    Millis,
    /// Microseconds per operation.
    Micros,
    /// Nanoseconds per operation.
    Nanos,
    /// Millions of messages per second (one operation = one message).
    MegaMsgsPerSec,
    /// Millions of operations per second (lock acquisitions, increments).
    MegaOpsPerSec,
    /// Millions of queue items per second (one operation = one item put and taken).
    MegaItemsPerSec,
    /// 10⁹ bytes per second, when one operation moves this many bytes.
    GigabytesPerSec(f64),
    /// A dimensionless ratio of two figures (a figure over its raw baseline).
    Ratio,
}

impl Unit {
    /// Converts a median time per operation (seconds) into this unit.
    pub(crate) fn of_secs_per_op(self, secs: f64) -> f64 {
        match self {
            Unit::Millis => secs * 1e3,
            Unit::Micros => secs * 1e6,
            Unit::Nanos => secs * 1e9,
            Unit::MegaMsgsPerSec | Unit::MegaOpsPerSec | Unit::MegaItemsPerSec => 1e-6 / secs,
            Unit::GigabytesPerSec(bytes) => bytes * 1e-9 / secs,
            Unit::Ratio => secs,
        }
    }

    /// The unit's label in the table.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Unit::Millis => "ms",
            Unit::Micros => "µs",
            Unit::Nanos => "ns",
            Unit::MegaMsgsPerSec => "M msg/s",
            Unit::MegaOpsPerSec => "M ops/s",
            Unit::MegaItemsPerSec => "M items/s",
            Unit::GigabytesPerSec(_) => "GB/s",
            Unit::Ratio => "x",
        }
    }

    fn higher_is_better(self) -> bool {
        matches!(
            self,
            Unit::MegaMsgsPerSec
                | Unit::MegaOpsPerSec
                | Unit::MegaItemsPerSec
                | Unit::GigabytesPerSec(_)
        )
    }
}

/// One column of a row.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Cell {
    /// A measured value, in the row's unit.
    Value(f64),
    /// This side has no such figure (raw baselines on the Python side): printed `-`.
    Absent,
    /// Python could not be run, or failed (the reason, if not already said): printed `n/a`.
    Unavailable(Option<String>),
    /// The measurement failed, with the reason: printed `error`.
    Error(String),
}

impl Cell {
    /// A cell from a median time per operation, converted to `unit`.
    pub(crate) fn from_secs(secs: Result<f64, String>, unit: Unit) -> Cell {
        match secs {
            Ok(s) => Cell::Value(unit.of_secs_per_op(s)),
            Err(e) => Cell::Error(e),
        }
    }

    fn value(&self) -> Option<f64> {
        match self {
            Cell::Value(v) => Some(*v),
            _ => None,
        }
    }
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cell::Value(v) => f.write_str(&sig3(*v)),
            Cell::Absent => f.write_str("-"),
            Cell::Unavailable(_) => f.write_str("n/a"),
            Cell::Error(_) => f.write_str("error"),
        }
    }
}

/// Formats with three significant digits (no exponent): `0.734`, `2.31`, `59.2`, `1234`.
pub(crate) fn sig3(v: f64) -> String {
    if !v.is_finite() || v == 0.0 {
        return format!("{v}");
    }
    let digits = v.abs().log10().floor() as i32;
    let decimals = (2 - digits).clamp(0, 6) as usize;
    format!("{v:.decimals$}")
}

/// A DESIGN.md target for the `multiprocess` column of a row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Target {
    /// The figure must be at most this.
    AtMost(f64),
    /// The figure must be at least this.
    AtLeast(f64),
}

impl Target {
    fn met_by(self, v: f64) -> bool {
        match self {
            Target::AtMost(t) => v <= t,
            Target::AtLeast(t) => v >= t,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::AtMost(t) => write!(f, "≤ {t}"),
            Target::AtLeast(t) => write!(f, "≥ {t}"),
        }
    }
}

/// One figure: `multiprocess` beside Python.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    figure: String,
    unit: Unit,
    ours: Cell,
    python: Cell,
    target: Option<Target>,
}

impl Row {
    /// A figure measured on both sides, from median times per operation.
    pub(crate) fn compare(
        figure: impl Into<String>,
        unit: Unit,
        ours: Result<f64, String>,
        python: Cell,
    ) -> Row {
        Row {
            figure: figure.into(),
            unit,
            ours: Cell::from_secs(ours, unit),
            python,
            target: None,
        }
    }

    /// A figure whose both sides were measured by other means (a Python client of our server
    /// and of Python's: both cells come from the Python script).
    pub(crate) fn cells(figure: impl Into<String>, unit: Unit, ours: Cell, python: Cell) -> Row {
        Row {
            figure: figure.into(),
            unit,
            ours,
            python,
            target: None,
        }
    }

    /// A raw OS baseline: no Python counterpart, no speedup.
    pub(crate) fn baseline(
        figure: impl Into<String>,
        unit: Unit,
        secs: Result<f64, String>,
    ) -> Row {
        Row {
            figure: figure.into(),
            unit,
            ours: Cell::from_secs(secs, unit),
            python: Cell::Absent,
            target: None,
        }
    }

    /// `figure / baseline` for each side (the `python` column holds Python's figure over the same
    /// baseline, for scale). A side is `-` when either of its inputs is missing.
    pub(crate) fn ratio(
        figure: impl Into<String>,
        ours: &Row,
        python: &Row,
        baseline: &Row,
    ) -> Row {
        let base = baseline.ours.value();
        let over = |c: &Cell| match (c.value(), base) {
            (Some(v), Some(b)) if b > 0.0 => Cell::Value(v / b),
            _ => Cell::Absent,
        };
        Row {
            figure: figure.into(),
            unit: Unit::Ratio,
            ours: over(&ours.ours),
            python: over(&python.python),
            target: None,
        }
    }

    /// `num / den` on each side on its own (Python's figure over Python's, ours over ours).
    pub(crate) fn ratio_each(figure: impl Into<String>, num: &Row, den: &Row) -> Row {
        let over = |a: &Cell, b: &Cell| match (a.value(), b.value()) {
            (Some(a), Some(b)) if b > 0.0 => Cell::Value(a / b),
            _ => Cell::Absent,
        };
        Row {
            figure: figure.into(),
            unit: Unit::Ratio,
            ours: over(&num.ours, &den.ours),
            python: over(&num.python, &den.python),
            target: None,
        }
    }

    /// The Python column, for a row whose Python counterpart is another row's (the same run's
    /// figure, where Python has no such variant).
    pub(crate) fn python_cell(&self) -> Cell {
        self.python.clone()
    }

    /// Attaches the DESIGN.md target for the `multiprocess` column.
    pub(crate) fn target(mut self, target: Target) -> Row {
        self.target = Some(target);
        self
    }

    /// `python / ours` for times, `ours / python` for rates; none for ratios and baselines.
    fn speedup(&self) -> Option<f64> {
        let (ours, python) = (self.ours.value()?, self.python.value()?);
        match self.unit {
            Unit::Ratio => None,
            u if u.higher_is_better() => Some(ours / python),
            _ => Some(python / ours),
        }
    }
}

/// Prints rows as they come (stdout), their problems (stderr), and keeps them for the target report.
#[derive(Debug)]
pub(crate) struct Table {
    rows: Vec<Row>,
    errors: bool,
}

impl Table {
    /// Prints the header line.
    pub(crate) fn new() -> Table {
        println!("figure\tmultiprocess\tpython\tunit\tspeedup");
        Table {
            rows: Vec::new(),
            errors: false,
        }
    }

    /// Prints `row` now and keeps it.
    pub(crate) fn push(&mut self, row: Row) {
        if let Cell::Error(e) = &row.ours {
            self.errors = true;
            eprintln!("error: {}: multiprocess: {e}", row.figure);
        }
        match &row.python {
            Cell::Error(e) | Cell::Unavailable(Some(e)) => {
                eprintln!("warning: {}: python: {e}", row.figure)
            }
            _ => {}
        }
        let speedup = row
            .speedup()
            .map_or_else(|| "-".to_string(), |s| format!("{s:.2}"));
        println!(
            "{}\t{}\t{}\t{}\t{speedup}",
            row.figure,
            row.ours,
            row.python,
            row.unit.label()
        );
        let _ = std::io::stdout().flush();
        self.rows.push(row);
    }

    /// Whether any `multiprocess` figure failed.
    pub(crate) fn had_errors(&self) -> bool {
        self.errors
    }

    /// Checks each row that has a target, on stderr.
    pub(crate) fn report_targets(&self) {
        let checked: Vec<_> = self.rows.iter().filter(|r| r.target.is_some()).collect();
        if checked.is_empty() {
            return;
        }
        eprintln!("-- DESIGN.md targets");
        for row in checked {
            let Some(target) = row.target else { continue };
            let verdict = match row.ours.value() {
                Some(v) if target.met_by(v) => "met",
                Some(_) => "MISSED",
                None => "not measured",
            };
            eprintln!(
                "{verdict:>12}: {} = {} {} (target {target})",
                row.figure,
                row.ours,
                row.unit.label()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_significant_digits() {
        assert_eq!(sig3(0.7341), "0.734");
        assert_eq!(sig3(2.314), "2.31");
        assert_eq!(sig3(59.24), "59.2");
        assert_eq!(sig3(1234.4), "1234");
        assert_eq!(sig3(0.0), "0");
    }

    #[test]
    fn speedup_direction_follows_the_unit() {
        let time = Row::compare("t", Unit::Millis, Ok(0.001), Cell::Value(3.0));
        assert_eq!(time.speedup(), Some(3.0));
        let rate = Row::compare("r", Unit::GigabytesPerSec(1e9), Ok(0.5), Cell::Value(1.0));
        assert_eq!(rate.speedup(), Some(2.0));
        let ops = Row::compare("o", Unit::MegaOpsPerSec, Ok(1e-8), Cell::Value(25.0));
        assert_eq!(ops.ours, Cell::Value(100.0));
        assert_eq!(ops.speedup(), Some(4.0));
        let base = Row::baseline("b", Unit::Millis, Ok(0.0005));
        assert_eq!(base.speedup(), None);
        let ratio = Row::ratio("x", &time, &time, &base);
        assert_eq!(ratio.ours, Cell::Value(2.0));
        assert_eq!(ratio.python, Cell::Value(6.0));
        assert_eq!(ratio.speedup(), None);
    }
}
