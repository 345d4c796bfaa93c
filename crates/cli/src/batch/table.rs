//! The tables `vigil batch` reads: CSV with a header row, or Parquet, as named columns of
//! cells (a number, a text, or missing).

use std::path::Path;

use anyhow::{Context, Result, bail};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

/// One cell of a table.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Number(f64),
    Text(String),
    Missing,
}

impl Cell {
    /// A CSV field: empty, `NA`, `NaN` and `null` are missing; numbers parse as numbers.
    fn parse(field: &str) -> Self {
        let field = field.trim();
        if field.is_empty() || ["na", "nan", "null"].contains(&field.to_ascii_lowercase().as_str()) {
            return Self::Missing;
        }
        field.parse::<f64>().map_or_else(|_| Self::Text(field.to_string()), Self::Number)
    }

    fn of(field: &Field) -> Self {
        match field {
            Field::Null => Self::Missing,
            Field::Bool(b) => Self::Number(f64::from(u8::from(*b))),
            Field::Byte(v) => Self::Number(f64::from(*v)),
            Field::Short(v) => Self::Number(f64::from(*v)),
            Field::Int(v) => Self::Number(f64::from(*v)),
            Field::Long(v) => Self::Number(*v as f64),
            Field::UByte(v) => Self::Number(f64::from(*v)),
            Field::UShort(v) => Self::Number(f64::from(*v)),
            Field::UInt(v) => Self::Number(f64::from(*v)),
            Field::ULong(v) => Self::Number(*v as f64),
            Field::Float(v) if v.is_nan() => Self::Missing,
            Field::Float(v) => Self::Number(f64::from(*v)),
            Field::Double(v) if v.is_nan() => Self::Missing,
            Field::Double(v) => Self::Number(*v),
            Field::Str(s) => Self::Text(s.clone()),
            other => Self::Text(other.to_string()),
        }
    }

    /// The cell as text (a number printed as written back), None when missing.
    pub fn text(&self) -> Option<String> {
        match self {
            Self::Number(v) => Some(v.to_string()),
            Self::Text(s) => Some(s.clone()),
            Self::Missing => None,
        }
    }
}

/// A table: column names and rows of cells, one per column.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    /// Whether `path` names a table this module reads (by its extension).
    pub fn is_table(path: &Path) -> bool {
        matches!(extension(path).as_deref(), Some("csv" | "parquet"))
    }

    /// Reads a `.csv` or `.parquet` file.
    pub fn read(path: &Path) -> Result<Self> {
        let table = match extension(path).as_deref() {
            Some("csv") => Self::csv(path),
            Some("parquet") => Self::parquet(path),
            _ => bail!("{}: not a table (give a .csv or .parquet file)", path.display()),
        }
        .with_context(|| format!("cannot read the table {}", path.display()))?;
        let mut seen = std::collections::HashSet::new();
        if let Some(twice) = table.columns.iter().find(|c| !seen.insert(c.as_str())) {
            bail!("{}: the column '{twice}' appears twice", path.display());
        }
        Ok(table)
    }

    fn csv(path: &Path) -> Result<Self> {
        let mut reader = csv::ReaderBuilder::new().has_headers(true).from_path(path)?;
        let columns: Vec<String> = reader.headers()?.iter().map(|h| h.trim().to_string()).collect();
        let mut rows = Vec::new();
        for (i, record) in reader.records().enumerate() {
            // Line numbers count the header as line 1.
            let record = record.with_context(|| format!("line {}", i + 2))?;
            rows.push(record.iter().map(Cell::parse).collect());
        }
        Ok(Self { columns, rows })
    }

    fn parquet(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path)?;
        let reader = SerializedFileReader::new(file)?;
        let schema = reader.metadata().file_metadata().schema_descr_ptr();
        let columns: Vec<String> = schema.root_schema().get_fields().iter().map(|f| f.name().to_string()).collect();
        let mut rows = Vec::with_capacity(reader.metadata().file_metadata().num_rows().max(0) as usize);
        for row in reader.get_row_iter(None)? {
            let row = row?;
            let mut cells = vec![Cell::Missing; columns.len()];
            for (name, field) in row.get_column_iter() {
                if let Some(i) = columns.iter().position(|c| c == name) {
                    cells[i] = Cell::of(field);
                }
            }
            rows.push(cells);
        }
        Ok(Self { columns, rows })
    }

    /// The index of a column by name.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }
}

fn extension(path: &Path) -> Option<String> {
    path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_numbers_texts_or_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(&path, "id,age,note\nA-1, 42 ,ok\nA-2,,NA\nA-3,NaN,\"a, b\"\n").unwrap();
        let t = Table::read(&path).unwrap();
        assert_eq!(t.columns, ["id", "age", "note"]);
        assert_eq!(t.rows[0], [Cell::Text("A-1".into()), Cell::Number(42.0), Cell::Text("ok".into())]);
        assert_eq!(t.rows[1][1..], [Cell::Missing, Cell::Missing]);
        assert_eq!(t.rows[2][1..], [Cell::Missing, Cell::Text("a, b".into())]);
    }

    #[test]
    fn ragged_rows_and_repeated_columns_are_refused_with_the_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(&path, "a,b\n1,2\n3\n").unwrap();
        let e = format!("{:#}", Table::read(&path).unwrap_err());
        assert!(e.contains("line 3"), "{e}");
        std::fs::write(&path, "a,a\n1,2\n").unwrap();
        let e = format!("{:#}", Table::read(&path).unwrap_err());
        assert!(e.contains("column 'a' appears twice"), "{e}");
        let e = format!("{:#}", Table::read(&dir.path().join("t.xlsx")).unwrap_err());
        assert!(e.contains("give a .csv or .parquet file"), "{e}");
    }
}
