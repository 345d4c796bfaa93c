//! The product catalog voice search answers from: a CSV file (`id,title,category,description`)
//! indexed in memory with tantivy (English stemming, BM25), searched with each query word
//! matched exactly or, for words of four letters or more, within one edit, and each pair of
//! neighbouring words also joined, so a recogniser's near misses ("hedphones", "lamb" for
//! "lamp", "sun glasses") still find the product.

use std::path::Path;

use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, BoostQuery, FuzzyTermQuery, Occur, Query, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions, Value};
use tantivy::{Index, IndexReader, TantivyDocument, Term, doc};

/// One row of the catalog file.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Product {
    pub id: String,
    pub title: String,
    pub category: String,
    pub description: String,
}

/// One search hit.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub product_id: String,
    pub title: String,
    pub category: String,
    pub score: f32,
}

/// The indexed catalog.
pub struct Catalog {
    index: Index,
    reader: IndexReader,
    fields: Fields,
    products: usize,
    /// The first 12 hex digits of the catalog file's sha256 (empty when built from rows).
    version: String,
}

#[derive(Clone, Copy)]
struct Fields {
    id: Field,
    title: Field,
    category: Field,
    description: Field,
}

/// Words shorter than this must match exactly (one edit away is too many other words).
const FUZZY_MIN_CHARS: usize = 4;

impl Catalog {
    /// Reads and indexes the CSV file at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| {
            anyhow::anyhow!(
                "voice search catalog {}: {e} (set voice_search.catalog, or voice_search.enabled = false)",
                path.display()
            )
        })?;
        let products = csv::Reader::from_reader(bytes.as_slice())
            .deserialize::<Product>()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("catalog {}: {e}", path.display()))?;
        let mut catalog = Self::build(&products).map_err(|e| anyhow::anyhow!("catalog {}: {e}", path.display()))?;
        let digest = <sha2::Sha256 as sha2::Digest>::digest(&bytes);
        catalog.version = hex::encode(&digest[..6]);
        Ok(catalog)
    }

    /// Indexes `products`.
    pub fn build(products: &[Product]) -> anyhow::Result<Self> {
        let mut schema = Schema::builder();
        let text = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("en_stem")
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        );
        let fields = Fields {
            id: schema.add_text_field("id", STRING | STORED),
            title: schema.add_text_field("title", text.clone() | STORED),
            category: schema.add_text_field("category", text.clone() | STORED),
            description: schema.add_text_field("description", text),
        };
        let index = Index::create_in_ram(schema.build());
        let mut writer = index.writer_with_num_threads(1, 15_000_000)?;
        for p in products {
            if p.id.is_empty() || p.title.is_empty() {
                anyhow::bail!("every product needs an id and a title ({p:?})");
            }
            writer.add_document(doc!(
                fields.id => p.id.as_str(),
                fields.title => p.title.as_str(),
                fields.category => p.category.as_str(),
                fields.description => p.description.as_str(),
            ))?;
        }
        writer.commit()?;
        let reader = index.reader()?;
        Ok(Self { index, reader, fields, products: products.len(), version: String::new() })
    }

    /// Which catalog answered, for the search records: a digest of its file.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Products indexed.
    pub fn len(&self) -> usize {
        self.products
    }

    /// Whether the catalog is empty.
    pub fn is_empty(&self) -> bool {
        self.products == 0
    }

    /// The best `limit` products for `query` (already normalised text), best first.
    pub fn search(&self, query: &str, limit: usize) -> anyhow::Result<Vec<Hit>> {
        let f = self.fields;
        let mut analyzer = self.index.tokenizer_for_field(f.title)?;
        let mut words = Vec::new();
        let mut stream = analyzer.token_stream(query);
        while stream.advance() {
            words.push(stream.token().text.clone());
        }
        if words.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        // Compounds the recogniser split in two ("sun glasses" for "sunglasses"): a match stands
        // for both words, so it weighs twice a word's.
        for pair in words.windows(2) {
            for (field, boost) in [(f.title, 6.0), (f.description, 2.0)] {
                let joined = Term::from_field_text(field, &format!("{}{}", pair[0], pair[1]));
                let exact = TermQuery::new(joined, IndexRecordOption::WithFreqs);
                clauses.push((Occur::Should, Box::new(BoostQuery::new(Box::new(exact), boost))));
            }
        }
        for word in &words {
            for (field, boost) in [(f.title, 3.0), (f.category, 1.5), (f.description, 1.0)] {
                let term = Term::from_field_text(field, word);
                let exact = TermQuery::new(term.clone(), IndexRecordOption::WithFreqs);
                clauses.push((Occur::Should, Box::new(BoostQuery::new(Box::new(exact), boost))));
                if word.chars().count() >= FUZZY_MIN_CHARS && field == f.title {
                    // A constant score, below an exact match's.
                    let near = FuzzyTermQuery::new(term, 1, true);
                    clauses.push((Occur::Should, Box::new(BoostQuery::new(Box::new(near), 0.5))));
                }
            }
        }
        let searcher = self.reader.searcher();
        let top = searcher.search(&BooleanQuery::new(clauses), &TopDocs::with_limit(limit))?;
        let mut hits = Vec::with_capacity(top.len());
        for (score, address) in top {
            let d: TantivyDocument = searcher.doc(address)?;
            let text = |field| d.get_first(field).and_then(|v| v.as_str()).unwrap_or_default().to_string();
            hits.push(Hit { product_id: text(f.id), title: text(f.title), category: text(f.category), score });
        }
        Ok(hits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Catalog {
        Catalog::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/catalog/products.csv")).unwrap()
    }

    #[test]
    fn every_shipped_query_finds_its_product_first_from_the_exact_words() {
        let catalog = shipped();
        assert!(catalog.len() >= 40);
        let queries =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/speech/queries.txt"))
                .unwrap();
        let mut checked = 0;
        for line in queries.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let (query, id) = line.split_once('|').unwrap();
            let hits = catalog.search(&vigil_speech::text::normalise(query), 5).unwrap();
            assert_eq!(hits.first().map(|h| h.product_id.as_str()), Some(id.trim()), "{query}: {hits:?}");
            assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
            checked += 1;
        }
        assert!(checked >= 20);
    }

    #[test]
    fn stems_and_near_misses_still_match_and_unrelated_words_do_not() {
        let catalog = shipped();
        // Plural to singular through the stemmer; one letter dropped or changed through the
        // fuzzy match; a compound split in two.
        assert_eq!(catalog.search("running shoe", 1).unwrap()[0].product_id, "P-1001");
        assert_eq!(catalog.search("wireless hedphones", 1).unwrap()[0].product_id, "P-1002");
        assert_eq!(catalog.search("best lamb", 1).unwrap()[0].product_id, "P-1018");
        assert_eq!(catalog.search("sun glasses", 1).unwrap()[0].product_id, "P-1022");
        assert!(catalog.search("zzzz qqqq", 5).unwrap().is_empty());
        assert!(catalog.search("", 5).unwrap().is_empty());
    }

    #[test]
    fn a_product_without_an_id_is_refused() {
        let bad = Product { id: String::new(), title: "x".into(), category: String::new(), description: String::new() };
        let error = Catalog::build(&[bad]).err().expect("refused");
        assert!(error.to_string().contains("needs an id"), "{error}");
    }
}
