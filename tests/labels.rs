//! Labels as users have them (issue 14 §4): names (`setosa`) and integers that are not 0..k−1
//! (`{3, 7}`, `{-1, 1}`) in CSV and `.npy` are mapped to classes sorted as scikit-learn's
//! `LabelEncoder` sorts them; a file's labels are matched to a model's classes by name.

mod common;

use std::path::Path;

use common::npy_bytes;
use wgnn::data::{DataSource, LabelColumn, LoadOptions, RawLabel, csv, encode_labels};

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// LabelEncoder's classes are the sorted distinct labels: as numbers when all are whole
/// numbers, else as text (by code point); each label becomes its class's index.
#[test]
fn labels_map_to_sorted_classes_as_label_encoder_does() {
    let whole = |v: &[i64]| encode_labels(v.iter().map(|&n| RawLabel::Whole(n)).collect());
    let e = whole(&[7, 3, 7, 7, 3]);
    assert_eq!((e.labels, e.classes), (vec![1, 0, 1, 1, 0], names(&["3", "7"])));
    // Numerically, not as text: 10 after 9, −1 before 0.
    let e = whole(&[10, 9, -1, 0]);
    assert_eq!((e.labels, e.classes), (vec![3, 2, 0, 1], names(&["-1", "0", "9", "10"])));
    let e = encode_labels(["b", "Z", "a", "b"].iter().map(|s| RawLabel::Name(s.to_string())).collect());
    assert_eq!((e.labels, e.classes), (vec![2, 0, 1, 2], names(&["Z", "a", "b"])));
}

#[test]
fn csv_labels_may_be_names_or_any_whole_numbers() {
    let text = "sl,sw,species\n5.1,3.5,setosa\n7.0,3.2,versicolor\n6.3,3.3,\"virginica\"\n4.9,3.0,setosa\n";
    let (x, labels) = csv::parse_csv(text, LabelColumn::Last).unwrap();
    let labels = labels.unwrap();
    assert_eq!(x.dim(), (4, 2));
    assert_eq!(labels.classes, names(&["setosa", "versicolor", "virginica"]));
    assert_eq!(labels.labels, vec![0, 1, 2, 0]);
    // The label column first, whole numbers that are not 0..k−1.
    let (_, labels) = csv::parse_csv("7,0.5,1\n3,0.25,2\n7,1,1\n", LabelColumn::First).unwrap();
    let labels = labels.unwrap();
    assert_eq!((labels.labels, labels.classes), (vec![1, 0, 1], names(&["3", "7"])));
    // A number with a fraction is a value, not a class: refused in one line naming the place.
    let e = csv::parse_csv("1,2,a\n3,4,1.5\n", LabelColumn::Last).unwrap_err();
    assert!(e.contains("line 2, column 3") && e.contains("`1.5` is not a class number"), "{e}");
    let e = csv::parse_csv("1,2,a\n3,4,a\n", LabelColumn::Last).unwrap_err();
    assert!(e.contains("every one of the 2 labels is a"), "{e}");
}

#[test]
fn npy_labels_may_be_any_whole_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let x = write(d, "x.npy", &npy_bytes("<f4", "(4, 2)", &[0u8; 32]));
    let load = |labels: &Path| {
        let options = LoadOptions { labels: Some(labels.to_path_buf()), ..LoadOptions::default() };
        DataSource::Npy(x.clone()).load(&options)
    };
    let i8s: Vec<u8> = [3i64, 7, 7, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
    let data = load(&write(d, "i.npy", &npy_bytes("<i8", "(4,)", &i8s))).unwrap();
    assert_eq!((data.labels.unwrap(), data.classes.unwrap()), (vec![0, 1, 1, 0], names(&["3", "7"])));
    let f8s: Vec<u8> = [1.0f64, -1.0, 1.0, -1.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let data = load(&write(d, "f.npy", &npy_bytes("<f8", "(4,)", &f8s))).unwrap();
    assert_eq!((data.labels.unwrap(), data.classes.unwrap()), (vec![1, 0, 1, 0], names(&["-1", "1"])));
    let u1s = [200u8, 5, 5, 200];
    let data = load(&write(d, "u.npy", &npy_bytes("|u1", "(4,)", &u1s))).unwrap();
    assert_eq!(data.classes.as_deref(), Some(&names(&["5", "200"])[..]));
    assert_eq!(data.num_classes(), Some(2));
    let half: Vec<u8> = [1.0f64, 1.5, 1.0, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let e = load(&write(d, "h.npy", &npy_bytes("<f8", "(4,)", &half))).unwrap_err().to_string();
    assert!(e.contains("h.npy") && e.contains("label 1.5 of example 1"), "{e}");
}

/// A file numbers its own classes; a model's are matched by name, and a label the model
/// never saw is refused in one line naming it.
#[test]
fn labels_are_matched_to_a_models_classes_by_name() {
    let test = "1,2,virginica\n3,4,setosa\n5,6,virginica\n";
    let (x, l) = csv::parse_csv(test, LabelColumn::Last).unwrap();
    let l = l.unwrap();
    let data = wgnn::data::Dataset {
        x,
        labels: Some(l.labels),
        classes: Some(l.classes),
        targets: None,
        description: "test".into(),
        image_shape: None,
    };
    // In the file: setosa 0, virginica 1; in the model: setosa 0, versicolor 1, virginica 2.
    let model = names(&["setosa", "versicolor", "virginica"]);
    assert_eq!(data.labels_for(Some(&model), 3).unwrap(), Some(vec![2, 0, 2]));
    let e = data.labels_for(Some(&names(&["setosa", "versicolor"])), 2).unwrap_err().to_string();
    assert!(e.contains("`virginica` (example 1)") && e.contains("setosa, versicolor") && !e.contains('\n'), "{e}");
    // A model without names (classes 0..k−1): names must be those numbers.
    let e = data.labels_for(None, 3).unwrap_err().to_string();
    assert!(e.contains("`virginica`") && e.contains("0, 1, 2"), "{e}");
    let (x, l) = csv::parse_csv("1,2,0\n3,4,2\n", LabelColumn::Last).unwrap();
    let l = l.unwrap();
    let numbers = wgnn::data::Dataset { labels: Some(l.labels), classes: Some(l.classes), ..data.clone() };
    let numbers = wgnn::data::Dataset { x, ..numbers };
    assert_eq!(numbers.labels_for(None, 3).unwrap(), Some(vec![0, 2]));
    assert!(numbers.labels_for(None, 2).is_err(), "class 2 of a 2-class model");
}

/// `--digits` on a CSV matches the labels as written and encodes the kept ones again.
#[test]
fn a_digits_filter_keeps_written_labels_and_encodes_them_again() {
    let (x, l) = csv::parse_csv("1,2,3\n3,4,7\n5,6,9\n7,8,7\n", LabelColumn::Last).unwrap();
    let l = l.unwrap();
    let data = wgnn::data::Dataset {
        x,
        labels: Some(l.labels),
        classes: Some(l.classes),
        targets: None,
        description: "d".into(),
        image_shape: None,
    };
    let kept = data.keep_labels(&"7-9".parse().unwrap()).unwrap();
    assert_eq!(kept.classes, Some(names(&["7", "9"])));
    assert_eq!(kept.labels, Some(vec![0, 1, 0]));
    assert_eq!(kept.x.column(0).to_vec(), vec![3.0, 5.0, 7.0]);
}
