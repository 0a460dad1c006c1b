//! A minimal reader of kernel BTF (`/sys/kernel/btf/vmlinux`): just enough to find a struct
//! by name and the offset, bit position and size of a member, descending through anonymous
//! structs and unions. It replaces CO-RE, which Rust eBPF does not have.
//!
//! Format: `Documentation/bpf/btf.rst` in the kernel tree.

use std::collections::HashMap;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("struct {0} is not in the kernel's BTF")]
    NoStruct(String),
    #[error("struct {strukt} has no member {member} in the kernel's BTF")]
    NoMember { strukt: String, member: String },
    #[error("enum {name} has no value {value} in the kernel's BTF")]
    NoEnumValue { name: String, value: String },
}

const MAGIC: u16 = 0xeb9f;

// BTF kinds.
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Type {
    name_off: u32,
    kind: u32,
    /// `size` for INT/STRUCT/UNION/ENUM/FLOAT, `type` for the modifiers, PTR, TYPEDEF…
    size_or_ref: u32,
    members: Vec<RawMember>,
    /// For ARRAY: (element type, element count).
    array: Option<(u32, u32)>,
    /// For ENUM: (name offset, value).
    values: Vec<(u32, i64)>,
}

#[derive(Debug, Clone, Copy)]
struct RawMember {
    name_off: u32,
    type_id: u32,
    /// Bit offset from the start of the struct.
    bit_offset: u32,
    /// Bitfield width, 0 for a whole member.
    bitfield_size: u32,
}

/// A member as the observer needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Byte offset of the byte holding the member's first bit.
    pub offset: u32,
    /// Bit position inside that byte (0 unless a bitfield).
    pub bit_shift: u32,
    /// Width in bits.
    pub bits: u32,
}

impl Member {
    #[must_use]
    pub fn bytes(&self) -> u32 {
        self.bits.div_ceil(8)
    }
}

pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs: HashMap<String, u32>,
    enums: HashMap<String, u32>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    /// Parses little-endian BTF.
    ///
    /// # Errors
    /// When the data is not BTF or is cut short.
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let magic = data.get(0..2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        if magic != Some(MAGIC) {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let type_sec = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();
        // Type id 0 is void.
        let mut types = vec![Type {
            name_off: 0,
            kind: 0,
            size_or_ref: 0,
            members: Vec::new(),
            array: None,
            values: Vec::new(),
        }];
        let mut at = 0;
        while at < type_sec.len() {
            let (ty, len) = parse_type(type_sec, at)?;
            types.push(ty);
            at += len;
        }
        let mut btf = Self {
            types,
            strings,
            structs: HashMap::new(),
            enums: HashMap::new(),
        };
        for (id, ty) in btf.types.iter().enumerate().skip(1) {
            if ty.name_off == 0 {
                continue;
            }
            let id = u32::try_from(id).map_err(|_| BtfError::Malformed("too many types"))?;
            let name = btf.str_at(ty.name_off).to_owned();
            match ty.kind {
                KIND_STRUCT | KIND_UNION => {
                    btf.structs.entry(name).or_insert(id);
                }
                KIND_ENUM => {
                    btf.enums.entry(name).or_insert(id);
                }
                _ => {}
            }
        }
        Ok(btf)
    }

    fn str_at(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn ty(&self, id: u32) -> Option<&Type> {
        self.types.get(id as usize)
    }

    /// Follows typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let ty = self.ty(id)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.size_or_ref;
                }
                _ => return Some(ty),
            }
        }
        None
    }

    /// Size in bytes of a type, through typedefs and qualifiers.
    fn size_of(&self, id: u32) -> Option<u32> {
        let ty = self.resolve(id)?;
        match ty.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                Some(ty.size_or_ref)
            }
            KIND_PTR => Some(8),
            KIND_ARRAY => {
                let (elem, n) = ty.array?;
                self.size_of(elem)?.checked_mul(n)
            }
            _ => None,
        }
    }

    #[must_use]
    pub fn has_struct(&self, name: &str) -> bool {
        self.structs.contains_key(name)
    }

    /// The value of `value` in `enum name`, for flags whose bit numbers are enum members.
    ///
    /// # Errors
    /// When the enum or the value does not exist, or the value is not a bit number.
    pub fn enum_value(&self, name: &str, value: &str) -> Result<u32, BtfError> {
        let missing = || BtfError::NoEnumValue {
            name: name.to_owned(),
            value: value.to_owned(),
        };
        let ty = self
            .enums
            .get(name)
            .and_then(|&id| self.ty(id))
            .ok_or_else(missing)?;
        ty.values
            .iter()
            .find(|&&(off, _)| self.str_at(off) == value)
            .and_then(|&(_, v)| u32::try_from(v).ok())
            .ok_or_else(missing)
    }

    /// Finds `path` (members separated by dots, e.g. `__sk_common.skc_daddr` or `ns.inum`) in
    /// struct `strukt`. Each step also looks inside anonymous structs and unions.
    ///
    /// # Errors
    /// When the struct or a member does not exist.
    pub fn member(&self, strukt: &str, path: &str) -> Result<Member, BtfError> {
        let no_member = || BtfError::NoMember {
            strukt: strukt.to_owned(),
            member: path.to_owned(),
        };
        let mut id = *self
            .structs
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let mut base_bits = 0u32;
        let mut found = None;
        for step in path.split('.') {
            let (bits, member) = self.find(id, step, 0).ok_or_else(no_member)?;
            base_bits += bits;
            id = member.type_id;
            found = Some(member);
        }
        let member = found.ok_or_else(no_member)?;
        let bits = if member.bitfield_size > 0 {
            member.bitfield_size
        } else {
            self.size_of(member.type_id).ok_or_else(no_member)? * 8
        };
        Ok(Member {
            offset: base_bits / 8,
            bit_shift: base_bits % 8,
            bits,
        })
    }

    /// Searches struct/union `id` for `name`, through anonymous members. Returns the bit offset
    /// of the member from the start of `id`, and the member.
    fn find(&self, id: u32, name: &str, depth: u32) -> Option<(u32, RawMember)> {
        if depth > 8 {
            return None;
        }
        let ty = self.resolve(id)?;
        if !matches!(ty.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        for m in &ty.members {
            if m.name_off != 0 && self.str_at(m.name_off) == name {
                return Some((m.bit_offset, *m));
            }
        }
        ty.members.iter().filter(|m| m.name_off == 0).find_map(|m| {
            self.find(m.type_id, name, depth + 1)
                .map(|(bits, inner)| (m.bit_offset + bits, inner))
        })
    }
}

/// Parses one type record at `at`; returns it and its length in bytes.
fn parse_type(sec: &[u8], at: usize) -> Result<(Type, usize), BtfError> {
    let name_off = u32_at(sec, at)?;
    let info = u32_at(sec, at + 4)?;
    let size_or_ref = u32_at(sec, at + 8)?;
    let vlen = (info & 0xffff) as usize;
    let kind = (info >> 24) & 0x1f;
    let kind_flag = info >> 31 == 1;
    let body = at + 12;
    let mut ty = Type {
        name_off,
        kind,
        size_or_ref,
        members: Vec::new(),
        array: None,
        values: Vec::new(),
    };
    let extra = match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
        | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
        KIND_ARRAY => {
            ty.array = Some((u32_at(sec, body)?, u32_at(sec, body + 8)?));
            12
        }
        KIND_STRUCT | KIND_UNION => {
            for i in 0..vlen {
                let m = body + i * 12;
                let offset = u32_at(sec, m + 8)?;
                let (bit_offset, bitfield_size) = if kind_flag {
                    (offset & 0x00ff_ffff, offset >> 24)
                } else {
                    (offset, 0)
                };
                ty.members.push(RawMember {
                    name_off: u32_at(sec, m)?,
                    type_id: u32_at(sec, m + 4)?,
                    bit_offset,
                    bitfield_size,
                });
            }
            vlen * 12
        }
        KIND_ENUM => {
            for i in 0..vlen {
                let v = body + i * 8;
                // Signedness is in kind_flag; bit numbers are small and positive either way.
                let raw = u32_at(sec, v + 4)?;
                ty.values
                    .push((u32_at(sec, v)?, i64::from(raw.cast_signed())));
            }
            vlen * 8
        }
        KIND_FUNC_PROTO => vlen * 8,
        KIND_DATASEC | KIND_ENUM64 => vlen * 12,
        _ => return Err(BtfError::Malformed("unknown type kind")),
    };
    Ok((ty, 12 + extra))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF with: int (id 1, 4 bytes), struct inner { u32 a; u32 b:3, c:5 } (id 2),
    /// struct outer { u64 x (as 2×int); union { struct inner; } ; inner named } (id 3…).
    fn sample() -> Vec<u8> {
        let mut strings = b"\0int\0inner\0a\0b\0c\0outer\0x\0named\0".to_vec();
        let s = |name: &str, strings: &[u8]| -> u32 {
            let needle = [name.as_bytes(), b"\0"].concat();
            u32::try_from(
                strings
                    .windows(needle.len())
                    .position(|w| w == needle.as_slice())
                    .expect("string"),
            )
            .expect("fits")
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int, 4 bytes, encoding word.
        push(&[s("int", &strings), KIND_INT << 24, 4, 32]);
        // 2: struct inner, kind_flag (bitfields), 3 members, size 8.
        push(&[s("inner", &strings), (1 << 31) | (KIND_STRUCT << 24) | 3, 8]);
        push(&[s("a", &strings), 1, 0]);
        push(&[s("b", &strings), 1, (3 << 24) | 0x20]);
        push(&[s("c", &strings), 1, (5 << 24) | 0x23]);
        // 3: anonymous union { struct inner; } size 8.
        push(&[0, (KIND_UNION << 24) | 1, 8]);
        push(&[0, 2, 0]);
        // 4: struct outer { int x; <anon union at 64 bits>; struct inner named at 128 bits }.
        push(&[s("outer", &strings), (KIND_STRUCT << 24) | 3, 24]);
        push(&[s("x", &strings), 1, 0]);
        push(&[0, 3, 64]);
        push(&[s("named", &strings), 2, 128]);
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        let type_len = u32::try_from(types.len()).expect("fits");
        let str_len = u32::try_from(strings.len()).expect("fits");
        for w in [24, 0, type_len, type_len, str_len] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.append(&mut types);
        out.append(&mut strings);
        out
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_paths() {
        let btf = Btf::parse(&sample()).expect("parses");
        assert_eq!(
            btf.member("outer", "x").expect("x"),
            Member {
                offset: 0,
                bit_shift: 0,
                bits: 32
            }
        );
        assert_eq!(
            btf.member("outer", "a").expect("a"),
            Member {
                offset: 8,
                bit_shift: 0,
                bits: 32
            }
        );
        assert_eq!(
            btf.member("outer", "c").expect("c"),
            Member {
                offset: 12,
                bit_shift: 3,
                bits: 5
            }
        );
        assert_eq!(
            btf.member("outer", "named.b").expect("b"),
            Member {
                offset: 20,
                bit_shift: 0,
                bits: 3
            }
        );
        assert_eq!(btf.member("inner", "c").expect("c").bytes(), 1);
    }

    #[test]
    fn missing_names_are_errors_that_name_them() {
        let btf = Btf::parse(&sample()).expect("parses");
        let err = btf.member("outer", "nope").expect_err("missing");
        assert_eq!(
            err.to_string(),
            "struct outer has no member nope in the kernel's BTF"
        );
        let err = btf.member("sock", "x").expect_err("missing");
        assert_eq!(err.to_string(), "struct sock is not in the kernel's BTF");
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert!(Btf::parse(b"").is_err());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0]).is_err());
        let mut cut = sample();
        cut.truncate(cut.len() - 20);
        assert!(Btf::parse(&cut).is_err());
    }

    #[test]
    fn reads_this_kernels_socket_layout() {
        let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            panic!("/sys/kernel/btf/vmlinux is required: observer needs a kernel with BTF");
        };
        let btf = Btf::parse(&data).expect("vmlinux BTF parses");
        // sock_common starts with the address pair on every kernel.
        assert_eq!(
            btf.member("sock", "__sk_common.skc_daddr")
                .expect("daddr")
                .offset,
            0
        );
        assert_eq!(
            btf.member("sock", "__sk_common.skc_rcv_saddr")
                .expect("saddr")
                .offset,
            4
        );
        assert_eq!(btf.member("tcp_sock", "srtt_us").expect("srtt").bits, 32);
        assert_eq!(
            btf.member("tcp_sock", "bytes_received")
                .expect("bytes")
                .bits,
            64
        );
        assert_eq!(btf.member("net", "ns.inum").expect("inum").bits, 32);
        assert_eq!(
            btf.enum_value("sock_flags", "SOCK_DONE")
                .expect("SOCK_DONE"),
            1
        );
        assert!(btf.enum_value("sock_flags", "SOCK_NOPE").is_err());
    }
}
