//! How a word of the vocabulary is declared: a closed set of names, each with the one spelling
//! manifests, specs, trailers, metrics and messages use. One macro, so every such enum has the same
//! `ALL`, `as_str`, `parse`, `Display` and serde (the spelling is the serde name).

/// Declares `pub enum $ty` with `$variant = "spelling"` entries (doc comments allowed).
#[macro_export]
macro_rules! vocabulary {
    ($(#[$meta:meta])* pub enum $ty:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(
            serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash,
            PartialOrd, Ord,
        )]
        #[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
        pub enum $ty {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
        }

        impl $ty {
            /// Every value, in documentation order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant,)+];

            /// The one spelling of this value.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text,)+ }
            }

            /// The value spelled `text` (exact, case-sensitive); `None` for anything else.
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($ty::$variant),)+ _ => None }
            }
        }

        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
