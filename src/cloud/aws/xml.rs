//! A small element tree over quick-xml, enough to read EC2 Query and S3 responses: elements by
//! local name (namespaces ignored), their text, and `item` lists.

use anyhow::{bail, Context, Result};
use quick_xml::events::Event;
use quick_xml::Reader;

#[derive(Debug, Default, Clone)]
pub struct Element {
    pub name: String,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    pub fn parse(xml: &str) -> Result<Element> {
        let mut reader = Reader::from_str(xml);
        reader.config_mut().trim_text(true);
        let mut stack: Vec<Element> = vec![Element::default()];
        loop {
            match reader.read_event().context("malformed XML")? {
                Event::Start(e) => stack.push(Element { name: local(e.local_name().as_ref()), ..Element::default() }),
                Event::Empty(e) => {
                    let el = Element { name: local(e.local_name().as_ref()), ..Element::default() };
                    stack.last_mut().unwrap().children.push(el);
                }
                Event::End(_) => {
                    let el = stack.pop().unwrap();
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(el),
                        None => bail!("malformed XML: unbalanced end tag"),
                    }
                }
                Event::Text(t) => stack.last_mut().unwrap().text.push_str(&t.unescape().context("malformed XML text")?),
                Event::CData(t) => stack.last_mut().unwrap().text.push_str(&String::from_utf8_lossy(&t)),
                Event::Eof => break,
                _ => {}
            }
        }
        let doc = stack.pop().unwrap();
        if !stack.is_empty() {
            bail!("malformed XML: unclosed elements");
        }
        doc.children.into_iter().next().context("empty XML document")
    }

    /// The first child named `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The element at a `/`-separated path of child names.
    pub fn at(&self, path: &str) -> Option<&Element> {
        path.split('/').try_fold(self, |e, name| e.child(name))
    }

    /// The text at a path, if the element is there and not empty.
    pub fn text_at(&self, path: &str) -> Option<&str> {
        self.at(path).map(|e| e.text.as_str()).filter(|t| !t.is_empty())
    }

    /// The `item` children of the element at `path` (EC2's list shape); none when absent.
    pub fn items(&self, path: &str) -> Vec<&Element> {
        self.at(path).map(|e| e.children.iter().filter(|c| c.name == "item").collect()).unwrap_or_default()
    }

    /// Every descendant (and self) named `name`, depth first.
    pub fn find_all<'a>(&'a self, name: &str, out: &mut Vec<&'a Element>) {
        if self.name == name {
            out.push(self);
        }
        for c in &self.children {
            c.find_all(name, out);
        }
    }
}

fn local(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ec2_shapes() {
        let doc = Element::parse(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeImagesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>r1</requestId>
  <imagesSet>
    <item><imageId>ami-1</imageId><name>a &amp; b</name><blockDeviceMapping><item><ebs><snapshotId>snap-1</snapshotId></ebs></item></blockDeviceMapping></item>
    <item><imageId>ami-2</imageId><name/></item>
  </imagesSet>
</DescribeImagesResponse>"#,
        )
        .unwrap();
        assert_eq!(doc.name, "DescribeImagesResponse");
        let items = doc.items("imagesSet");
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].text_at("name"), Some("a & b"));
        assert_eq!(items[1].text_at("name"), None);
        assert_eq!(items[0].items("blockDeviceMapping")[0].text_at("ebs/snapshotId"), Some("snap-1"));
        assert!(Element::parse("<a><b></a>").is_err());
    }
}
