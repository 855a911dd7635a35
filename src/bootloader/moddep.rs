//! GRUB module dependencies, from the `moddep.lst` GRUB ships beside its modules.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Result};

/// `moddep.lst`: one line per module, `name: dependency dependency…`.
pub struct ModDeps {
    deps: HashMap<String, Vec<String>>,
}

impl ModDeps {
    pub fn parse(text: &str) -> Result<ModDeps> {
        let mut deps = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let Some((name, list)) = line.split_once(':') else {
                bail!("moddep.lst line {}: expected `module: dependencies`, found {line:?}", number + 1);
            };
            // A later line wins, as in grub-mkimage (it searches a list it built by prepending).
            deps.insert(name.trim().to_string(), list.split_whitespace().map(str::to_string).collect());
        }
        Ok(ModDeps { deps })
    }

    /// The modules to embed for `wanted`, in the order grub-mkimage embeds them: every module
    /// after its dependencies, and a module's dependencies visited last-listed first (mkimage
    /// builds each dependency list by prepending). Keeping that order keeps our core.img
    /// identical to grub-mkimage's, which the tests check.
    pub fn closure(&self, wanted: &[String]) -> Result<Vec<String>> {
        let mut order = Vec::new();
        let mut done = HashSet::new();
        let mut visiting = Vec::new();
        for name in wanted {
            self.visit(name, &mut order, &mut done, &mut visiting)?;
        }
        Ok(order)
    }

    fn visit(&self, name: &str, order: &mut Vec<String>, done: &mut HashSet<String>, visiting: &mut Vec<String>) -> Result<()> {
        if done.contains(name) {
            return Ok(());
        }
        if visiting.iter().any(|v| v == name) {
            bail!("moddep.lst has a dependency cycle: {} -> {name}", visiting.join(" -> "));
        }
        visiting.push(name.to_string());
        for dep in self.deps.get(name).into_iter().flatten().rev() {
            self.visit(dep, order, done, visiting)?;
        }
        visiting.pop();
        done.insert(name.to_string());
        order.push(name.to_string());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn dependencies_first_in_reverse_listed_order() {
        let deps = ModDeps::parse("btrfs: gzio zstd\ngzio: crc\nzstd:\ncrc:\nnormal: crc\n").unwrap();
        assert_eq!(deps.closure(&names(&["btrfs", "normal"])).unwrap(), names(&["zstd", "crc", "gzio", "btrfs", "normal"]));
    }

    #[test]
    fn cycles_and_bad_lines_are_errors() {
        let deps = ModDeps::parse("a: b\nb: a\n").unwrap();
        assert!(deps.closure(&names(&["a"])).unwrap_err().to_string().contains("cycle"));
        assert!(ModDeps::parse("no colon here\n").is_err());
    }
}
