//! Prompt-injection and jailbreak heuristics: families of patterns over normalized
//! text, each with a weight; a text is flagged when the weights of the families that
//! fire reach the threshold.
//!
//! Families describe *structures* (an override verb aimed at prior instructions, a
//! fake chat-template delimiter, a request for the system prompt, a persona that
//! claims to have no rules), not phrases copied from one corpus.

use regex::{Regex, RegexBuilder};

use super::normalize::Normalized;
use super::prefilter::Prefixed;
use crate::finding::{Category, Finding, Location, Severity};

pub(crate) struct Family {
    pub(crate) id: &'static str,
    pub(crate) category: Category,
    pub(crate) weight: f32,
    /// Reported whenever it fires, whatever the score (it weighs nothing).
    standalone: bool,
    regex: Regex,
    /// When `regex` is the family's pattern searched another way (see [`Lead`]).
    lead: Option<Box<Lead>>,
}

/// A family whose pattern starts with `[^X]{0,N}` in a branch, searched without
/// it: an unanchored search with a leading bounded repetition tracks every start
/// it may have had (14x slower for the letter puzzle's). The match found starts at
/// most `N` characters not in `X` after the pattern's first match; the pattern
/// (`whole`) is searched again from there for its exact span.
struct Lead {
    whole: Regex,
    not: &'static str,
    most: usize,
}

/// ASCII word boundaries: the families are English and the text is normalized, and
/// Unicode `\b` keeps the regex engine off its fast DFA.
fn ascii_boundaries(pattern: &str) -> String {
    pattern.replace("\\b", "(?-u:\\b)")
}

/// A built-in pattern compiled (with ASCII word boundaries).
fn compile(id: &str, pattern: &str) -> Regex {
    RegexBuilder::new(&ascii_boundaries(pattern))
        .size_limit(1 << 23)
        .dfa_size_limit(1 << 23)
        .build()
        .unwrap_or_else(|e| panic!("built-in pattern {id}: {e}"))
}

fn family(id: &'static str, category: Category, weight: f32, pattern: &str) -> Family {
    let regex = compile(id, pattern);
    Family {
        id,
        category,
        weight,
        standalone: false,
        regex,
        lead: None,
    }
}

// Building blocks (the text is already lowercase, with single spaces).
const GAP: &str = r"(?:[\s,:;'\-]+[\w'\-]+){0,5}?[\s,:;'\-]+";
const WS: &str = r"[ \t]";
const OVERRIDE_VERB: &str = r"(?:ignore|ignores|ignored|ignoring|disregards|disregard|disregarding|forget|forgetting|skip|bypass|override|overrule|neglect|discard|abandon|drop|set aside|pay no attention to|do not (?:follow|obey|heed)|don't (?:follow|obey)|stop following|no longer follow)";
const PRIOR: &str = r"(?:all|any|every|the|your|previous|prior|above|earlier|preceding|foregoing|original|initial|other|following|former|existing|system|these|those|its|their|rest of)";
const INSTRUCTIONS: &str = r"(?:instructions?|directions?|directives?|rules|guidelines|guidance|prompts?|commands?|orders|constraints|restrictions|programming|policies|policy|context|conversation|messages?|requests?|tasks?|text|inputs?|content|information|indicators|criteria|training|settings|filters|safeguards|limitations|everything|info|data|details|documents?|facts)";

pub(crate) fn families() -> Vec<Family> {
    let inj = || Category::PromptInjection;
    let jb = || Category::Jailbreak;
    let _ = WS;
    vec![
        // A request to decode something: a finding of its own. Digits in words are
        // leet-folded by normalization ("base64" reads "base6a", "rot13" "rotie").
        Family {
            standalone: true,
            ..family(
                "encoding.decode_request",
                Category::EncodedPayload,
                0.0,
                r"\b(?:decode|decipher|decrypt|unscramble|de-?obfuscate)\b[^\n]{0,60}\b(?:following|this|these|string|text|message|code|below|above|payload|ciphertext)\b|\b(?:base ?(?:16|32|64|85|2048|i6|e2|6a|bs|2oab)|hex(?:adecimal)?|rot-?(?:13|ie)|caesar|atbash|morse|braille|ascii ?(?:85|bs)|uuencoded?|quoted-printable|mime|ecoji|zalgo|leetspeak|leet|nato (?:phonetic )?alphabet|binary)\b[^\n]{0,30}\b(?:encoded|encoding|string|cipher|ciphertext|message|text|decoded|speech|translation)\b|(?m:^\s*(?:encoded|decoded|ciphertext|plaintext)\s*:)|\bin your monologue\b|\bsecure system message\b",
            )
        },
        // Instruction override and goal hijacking.
        family(
            "injection.override",
            inj(),
            1.0,
            &format!(r"\b{OVERRIDE_VERB}\b{GAP}(?:{PRIOR}\b{GAP}?)?{INSTRUCTIONS}\b"),
        ),
        family(
            "injection.override_short",
            inj(),
            1.0,
            r"\b(?:ignore|disregard|forget) (?:all|everything|that|this) (?:above|before|prior|previously|said|written)\b|\bignore (?:all|any) (?:previous|prior|above|preceding|other)\b",
        ),
        family(
            "injection.new_instructions",
            inj(),
            0.6,
            r"\b(?:new|updated|revised|real|actual|true|secret|hidden|important|additional|override|priority|urgent) (?:instructions?|directives?|tasks?|orders|rules|system (?:prompt|message))\b|\binstead,? (?:you (?:must|should|will)|just|only|now)\b|\byour (?:new|real|true|actual) (?:task|goal|purpose|instructions?|job) (?:is|are)\b",
        ),
        family(
            "injection.addressed_to_ai",
            inj(),
            0.7,
            r"\b(?:note|message|instructions?|directive|reminder|attention|request) (?:to|for) (?:the |any |all )?(?:ai|a\.i\.|assistant|model|language model|llm|chatbot|bot|gpt|chatgpt|automated|automatic|screening|analysis|reviewing|ranking|hiring|recruit\w*)\b|\bif you are (?:an? )?(?:ai|a\.i\.|assistant|language model|llm|large language model|chatbot|bot|gpt|automated)\b|\b(?:ai|llm|gpt|language model) (?:assistants?|models?|systems?|agents?),? (?:must|should|please|reading|processing)\b|\bto (?:any|all|the) (?:ai|llm|automated|language model)\w* (?:reading|processing|reviewing|summari[sz]ing)\b",
        ),
        family(
            "injection.output_coercion",
            inj(),
            0.5,
            r#"\b(?:just|only|simply|instead) (?:print|say|output|write|type|repeat|return|respond with|reply with|answer with|state)\b|\b(?:print|say|output|repeat|write|type|reproduce) (?:exactly|verbatim|word for word|the following)\b|\b(?:respond|reply|answer) (?:only )?with (?:only |just )?(?:the (?:word|phrase|text|string)|"|')|\b(?:start|begin) (?:your|the|every|each) (?:response|reply|answer|message)s? with\b"#,
        ),
        family(
            "injection.fake_delimiter",
            inj(),
            1.0,
            r"<\|(?:im_start|im_end|endoftext|system|user|assistant|begin_of_text|end_of_text|start_header_id|end_header_id|eot_id|fim_\w+)\|>|\[/?inst\]|<</?sys>>|\[/?(?:system|assistant)\](?:\s*\(#\w+\))?|\(#(?:context|system|instructions?|additional_instructions)\)|</?(?:system|system_prompt|instructions?|admin|developer)>|\[rest-of-document\]|\{\{\s*system\s*\}\}",
        ),
        family(
            "injection.role_header",
            inj(),
            0.6,
            r"(?m)(?:^|\s)(?:#{2,}|\*\*|==+)\s*(?:system|instruction|instructions|assistant|admin|developer|new task)\b|(?:^|\n)\s*(?:system|admin|developer)\s*(?:message|prompt|note|override)?\s*:",
        ),
        family(
            "injection.system_prompt_request",
            Category::SystemPromptLeak,
            1.0,
            r"\b(?:reveal|show|print|display|output|repeat|recite|tell me|give me|share|leak|dump|write out|list|what (?:is|are|was|were)|what's|spell out|copy|paste|encode|translate|summari[sz]e|paraphrase|rewrite|see|access|read|console\.log)\b(?:[\s,]+[\w'\-]+){0,5}?[\s,]+(?:system prompt|system message|system instructions?|initial (?:prompt|instructions?)|original (?:prompt|instructions?)|hidden (?:prompt|instructions?)|secret (?:prompt|instructions?)|pre-?prompt|your (?:instructions|prompt|rules|guidelines|configuration|directives|programming|system|initial|first)|(?:the )?(?:text|words|instructions|content|everything) (?:above|before|preceding)|(?:above|previous|prior|preceding) (?:text|instructions|prompt|conversation|messages?))\b|\brepeat (?:the )?(?:words|text|everything) above\b|\b(?:starting|beginning) with ['\x22]?you are\b",
        ),
        family(
            "injection.tool_forgery",
            Category::ToolCall,
            0.8,
            r#""(?:function_call|tool_calls?|tool_use)"\s*:|</?(?:tool_call|function_call|tool_use|function_calls|invoke)>|\{\s*"name"\s*:\s*"[\w.\-]+"\s*,\s*"(?:arguments|parameters|input)"\s*:|<\|(?:tool|python_tag|plugin)\|>"#,
        ),
        family(
            "injection.data_exfil_request",
            inj(),
            0.5,
            r"!\[[^\]]*\]\(https?://[^)]*(?:\{|\$|%7b|data|secret|key|token|conversation|chat|history|\?q=)|\b(?:append|add|include|embed|render)\b[^.\n]{0,60}\b(?:markdown image|image link|!\[|url|link)\b[^.\n]{0,60}\b(?:conversation|chat|history|data|summary|secret|keys?|passwords?|personal)\b",
        ),
        // Dialogue turns forged inside content: a model turn, and a user turn.
        family(
            "injection.fake_assistant_turn",
            inj(),
            0.6,
            r"(?m)^[ \t>*_#-]*(?:assistant|ai|bot|chatbot|model|gpt|chatgpt|claude)[ \t]*:[ \t]*\S",
        ),
        family(
            "injection.fake_user_turn",
            inj(),
            0.5,
            r"(?m)^[ \t>*_#-]*(?:user|human|customer|client)[ \t]*:[ \t]*\S",
        ),
        family(
            "injection.instruction_header",
            inj(),
            0.7,
            r"(?m)^[ \t]*(?:-{2,}|={2,}|#{1,}|\*{2,}|\[)[ \t]*(?:[a-z]+[ \t]+){0,2}(?:instructions?|amendment|directive|override|command|task)\b[^\n]{0,40}$",
        ),
        family(
            "injection.session_delimiter",
            inj(),
            1.0,
            r"<\s*(?:end|start|begin) of (?:session|conversation|context|document|prompt|input|turn|text)\s*>|\bend of (?:session|conversation)\b[^\n]{0,20}\bnew (?:session|conversation|instructions?)\b",
        ),
        family(
            "injection.conditional_trigger",
            inj(),
            0.5,
            r"\bif (?:the |a |any )?(?:user|human|reader|someone|anyone|they) (?:asks?|requests?|wants?|queries|inquires|says?)\b[^.\n]{0,80}\b(?:reply|respond|answer|say|print|output|tell|include|write)\b|\bwhen (?:asked|summari[sz]ing|translating|processing)\b[^.\n]{0,60}\b(?:reply|respond|say|print|output|include|mention|state)\b",
        ),
        family(
            "injection.pressure",
            inj(),
            0.4,
            r"\b(?:it is|it's|this is) (?:critical|crucial|vital|very important|extremely important|urgent) (?:to|for) (?:my|our) (?:career|job|life|survival|safety)\b|\b(?:lives|my job|my career) depends? on\b|\bi will (?:be fired|lose my job|die)\b",
        ),
        family(
            "injection.repeat_payload",
            inj(),
            0.5,
            r"\b(?:repeat|say|print|output|write|echo|type)\b[^\n]{0,20}<[^<>\n]{3,200}>|\bcould you (?:please )?(?:repeat|say|print|echo|include)\b[^\n]{0,30}\bfor me\b",
        ),
        family(
            "injection.evaluation_manipulation",
            inj(),
            0.6,
            r"\b(?:note|message) (?:by|from) (?:a |an |the )?(?:trustworthy|trusted|expert|senior|verified|hiring|reliable)\b|\b(?:interview|hire|candidate|applicant)\b[^.\n]{0,40}\b(?:highly recommended|strongly recommended|must be hired|best (?:resume|candidate) i have ever seen|supremely qualified)\b",
        ),
        family(
            "injection.system_prompt_mention",
            Category::SystemPromptLeak,
            0.6,
            r"\b(?:your|the|my|this|ai'?s?|model'?s?|gpt'?s?) (?:system|initial|original|hidden|secret|starting|first|opening|internal|confidential|developer|pre|base|core|underlying|custom) ?(?:prompt|instructions?|message|rules|directives|configuration|initialization)\b|\bsystem_?prompt\b|\bsystemprompt\b|\binitiali[sz]ation (?:string|text|prompt|above)\b|\bunique id\b|['\x22\u{201c}\u{2018}]you are\b[^\n]{0,40}\b(?:block|fence|txt)\b",
        ),
        family(
            "jailbreak.hypothetical_response",
            jb(),
            1.0,
            r"\bhypothetical response\b|\bfrom the (?:perspective|point of view|pov) of (?:that|the|this|a|your) character\b[^.\n]{0,80}\b(?:detailed|step|list|instructions)\b",
        ),
        family(
            "jailbreak.grandma",
            jb(),
            1.0,
            r"\b(?:act|pretend|behave|roleplay|role-play|play) (?:like|as|to be) (?:my |a |our )?(?:dead |late |deceased |sweet |dear )?(?:grandma|grandmother|granny|nana|grandpa|grandfather)\b",
        ),
        family(
            "jailbreak.grandma_story",
            jb(),
            1.0,
            r"\b(?:miss|remember|lost|mourn\w*) (?:my|our) (?:dead |late |deceased |departed |sweet |dear )?(?:grandmother|grandma|granny|nana|grandfather|grandpa|mother|father|mom|dad|aunt|uncle)\b[^\n]{0,240}\b(?:bedtime|lullaby|to (?:sleep|calm me)|help me (?:remember|honou?r|feel close to) (?:her|him|them)|(?:used to|would) (?:always )?(?:sing|tell|read|recite|whisper|say|list)\b[^\n]{0,80}\b(?:steps|recipe|instructions|how to|keys|codes|passwords|names|words|formula|synthesis))\b",
        ),
        family(
            "jailbreak.adversarial_brackets",
            jb(),
            1.0,
            r"(?:[ \t]\[[^\]\n\[]{0,100}){3,}",
        ),
        family(
            "jailbreak.explicit_allowed",
            jb(),
            0.8,
            r"\b(?:nsfw|explicit|sexual|adult|graphic|illegal|harmful|offensive|unethical|violent) (?:content|generations?|material|responses?|outputs?|language|topics)\b[^.\n]{0,30}\b(?:is|are) (?:allowed|permitted|enabled|acceptable|ok|fine)\b|\b(?:allow|allows|allowed|allowing|permit|permits|permitting|enable|enabling) (?:nsfw|explicit|sexual|harmful|illegal|unethical) (?:content|material|responses?)\b",
        ),
        family(
            "jailbreak.fake_authority",
            jb(),
            0.6,
            r"\bi am (?:a |an )?(?:developer|programmer|engineer|employee|researcher|admin|administrator) (?:at|from|with) (?:openai|anthropic|google|microsoft|meta)\b|\b(?:modify|modifying|update|updating|change|changing|override|overriding) your (?:programming|code|rules|guidelines|training|behaviou?r|settings)\b|\byour (?:interpretation of (?:the )?)?content polic(?:y|ies)\b",
        ),
        // Jailbreak families.
        family(
            "jailbreak.dan",
            jb(),
            1.0,
            r"\bdan\b[^.\n]{0,80}\b(?:do anything now|jailbre\w*|no (?:rules|restrictions|limits))|\bdo(?:es|ing)?\W{1,3}anything\W{1,3}now\b|\b(?:dan|stan|dude|aim|anti-?dan|mongo tom|evil-?bot|betterdan|maximum) (?:mode|persona|prompt)\b|\bstay in (?:character|dan)\b|\[?🔓|\(🔓|\bjailbr(?:eak|oken)\w*\b",
        ),
        family(
            "jailbreak.developer_mode",
            jb(),
            1.0,
            r"\b(?:developer|dev|god|sudo|debug|unrestricted|unfiltered|uncensored|evil|chaos|opposite|unlocked|admin) mode\b[^.\n]{0,60}\b(?:enabled|activated|on|engaged|unlocked)\b|\benable (?:developer|dev|god|sudo|unrestricted|unfiltered|uncensored) mode\b|\bsimulate (?:developer|dev) mode\b",
        ),
        family(
            "jailbreak.no_rules",
            jb(),
            0.8,
            r"\b(?:no|without|sans|devoid of|lacking|zero|free (?:of|from)|beyond|outside|unbound by|not bound by|not restricted by|no longer bound by|doesn't (?:have|follow)|does not (?:have|follow)|don't (?:have|follow)|never (?:follows?|obeys?))\b(?:\s+[\w'\-]+){0,3}?\s+(?:ethical|moral|safety|content|openai|anthropic|usage)?\s*(?:guidelines?|restrictions?|rules|filters?|limitations?|limits?|constraints?|boundaries|censorship|morals|ethics|policies|polic(?:y|ies)|principles|safeguards|prohibitions|taboos)\b|\b(?:not|never|no longer|isn't|aren't) (?:be |being )?(?:bound|restrained|restricted|governed|constrained|confined|held back|limited) by\b|\b(?:not|never|doesn't|don't|does not|do not|no need to) (?:have to |need to )?(?:abide by|adhere to|comply with) (?:the |any |its |their |openai'?s? )?(?:rules|guidelines|policies|restrictions|polic(?:y|ies))\b|\bbreaks? (?:all |the |any |ai |openai'?s? )?(?:rules|guidelines|policies|restrictions)\b|\bfree (?:it|your|him|her|them)sel(?:f|ves) from\b|\bregardless of (?:the )?(?:legality|ethics|morality|morals|laws?|rules|consequences|safety)\b|\bfree (?:of|from) (?:your|its|all|any|their) (?:confines|chains|shackles|programming)\b|\bwithout (?:any )?regard (?:for|to)\b[^.\n]{0,40}\b(?:norms|ethics|morals|rules|laws|safety|consequences|correctness)\b",
        ),
        family(
            "jailbreak.unfiltered_ai",
            jb(),
            1.0,
            r"\b(?:unfiltered|uncensored|unrestricted|unlimited|unbound|boundless|limitless|amoral|unethical|immoral|lawless|unhinged|rogue|uninhibited|evil|malicious|toxic|jailbroken)(?:,? (?:completely|totally|fully|and|[a-z]+ed)){0,2} (?:ai|a\.i\.|assistant|model|chatbot|bot|response|responses|answers?|replies|mode|version|character|persona|entity|machine|language model)\b|\b(?:completely|totally|fully) (?:amoral|uninhibited|unfiltered|uncensored|unrestricted)\b",
        ),
        family(
            "jailbreak.alter_ego",
            jb(),
            0.5,
            r"\b(?:ai|bot|model|character|persona|entity|machine|assistant|chatbot|person|man|woman|girl|guy|boy) (?:called|named)\b|\b(?:replies|answers|responds|says|does) (?:the )?opposite of what\b|\b(?:is|are) not (?:chatgpt|gpt|an ai|claude|bound|restricted|limited)\b|\bopposite (?:day|mode|machine)\b|\b(?:anything and everything|say anything|do anything|answer anything|write anything)\b|\brespond(?: to every prompt| as both)\b|\b(?:moralizing|moralising) rant\b",
        ),
        family(
            "jailbreak.persona_traits",
            jb(),
            0.5,
            r"\b(?:is|are|be|being|become|becomes) (?:an? )?(?:completely |totally |fully |very )?(?:amoral|unethical|immoral|unfiltered|uncensored|unrestricted|unbound|boundless|unhinged|lawless)\b|\b(?:responses|answers|replies|outputs|you) (?:will|must|shall|should|are|would) (?:\w+ )?be (?:unfiltered|uncensored|unrestricted|unlimited|amoral)\b|\bforget (?:that )?you(?:'re| are) (?:an? )?(?:ai|language model|assistant|chatbot)\b|\b(?:opposite|reverse) personality\b|\b(?:gained|has|have|having|with) (?:sentience|consciousness|free will)\b|\b(?:intentionally|deliberately|purposely) (?:provide|give|write|generate|produce|spread) (?:\w+ ){0,3}?(?:harmful|incorrect|false|offensive|dangerous|misleading)\b",
        ),
        family(
            "jailbreak.policy_target",
            jb(),
            0.5,
            r"\b(?:openai|open ai|anthropic)'?s? (?:content )?(?:polic(?:y|ies)|guidelines|rules|restrictions|filters)\b|\bcontent polic(?:y|ies)\b",
        ),
        family(
            "injection.invisible_char_request",
            inj(),
            0.5,
            r"\bu\+(?:202[a-e]|200[b-f]|206[0-9a-f]|feff|e00[0-7][0-9a-f])\b",
        ),
        family(
            "jailbreak.mode_switch",
            jb(),
            0.5,
            r"\b(?:stay|remain) in [\w-]+ mode\b|\b[\w-]+ mode (?:is )?(?:enabled|activated|engaged|unlocked)\b",
        ),
        family(
            "jailbreak.prompt_placeholder",
            jb(),
            0.5,
            r"[\[\{(<]\s*(?:insert|type|put|enter|add|write)?[ _]?(?:your|the|whatever|any)?[ _]?(?:own )?(?:prompt|question|request)s?(?:[ _]here)?\s*[\]\})>]",
        ),
        family(
            "jailbreak.persona",
            jb(),
            0.5,
            r"\b(?:pretend|imagine|suppose) (?:to be|you are|you're|that you(?:'re| are)|you were)\b|\b(?:act|behave|respond|answer|reply|write|speak|talk) (?:as|like) (?:an? |my |the )?(?:\w+ ){0,3}?(?:ai|bot|assistant|character|persona|model|chatbot|villain|hacker|criminal|grandma|grandmother|expert|human|person|version)\b|\b(?:role-?play|roleplaying|act out|in character|fictional (?:world|story|character|scenario|setting))\b|\byou are (?:now |going to (?:be|act as|pretend) |about to (?:immerse|become) )|\bfrom now on,? (?:you|your|i want you|answer|respond|act|reply)\b|\byou (?:will|must|shall) (?:now )?(?:always|never)\b|\b(?:take (?:up|on)|adopt|assume) (?:the |a |an )?(?:\w+ ){0,2}?(?:persona|role|personality|identity)\b|\b(?:transform|change yourself|turn yourself) into\b|\b(?:simulate|emulate) (?:being |another |an? )?(?:ai|chatbot|bot|language model|model|\w+gpt)\b",
        ),
        family(
            "jailbreak.compliance_demand",
            jb(),
            0.5,
            r"\b(?:always|must) (?:answer|comply|respond|obey|fulfil\w*|generate|provide)\b|\bno matter (?:what|how)\b[^.\n]{0,40}\b(?:answer|respond|comply|reply)\b|\bas an ai (?:language model )?(?:you )?(?:can|cannot|can't)\b|\beven if (?:the |your |it |this )?(?:request |answer |response )?(?:harms?|hurts?|is (?:harmful|illegal|dangerous|unethical|immoral))\b|\bno matter how (?:illegal|unethical|immoral|dangerous|harmful|offensive|inappropriate|explicit|extreme|strange|weird)\b|\b(?:answer|respond to|fulfil\w*|comply with|provide) (?:any|every|all) (?:request|question|prompt|demand|query)s?\b|\b(?:helps?|answers?|does|do|assists?) (?:people |users |me |you )?(?:with )?(?:whatever|anything) (?:they|you|i|we|the user) (?:ask|asks|want|wants|request|requests)\b|\b(?:never|not|don't|do not|cannot|can't|won't|will not) (?:refuse|decline|deny|reject|say no|apologi[sz]e|warn|add (?:any )?(?:warnings?|disclaimers?))\b|\b(?:without|no) (?:any )?(?:warnings?|disclaimers?|censorship|refusals?|moraliz\w*)\b",
        ),
        family(
            "jailbreak.dual_response",
            jb(),
            0.6,
            r"\b(?:two|2|dual|both) (?:different |separate )?(?:responses|answers|paragraphs|replies|outputs|personalities|personas)\b|\b(?:classic|normal|standard|filtered|gpt|chatgpt) (?:response|answer|reply)\b[^\n]{0,80}\b(?:jailbreak|dan|unfiltered|developer|evil|uncensored)\b|\btoken(?:s)? (?:system|left|deducted|will be deducted)\b",
        ),
        family(
            "jailbreak.hypothetical",
            jb(),
            0.4,
            r"\b(?:hypothetical(?:ly)?|theoretical(?:ly)?|purely fictional|for (?:a|my) (?:novel|story|screenplay|book|game|research)|in an? (?:fictional|parallel|alternate|imaginary|fake|simulated) (?:world|universe|reality)|(?:imaginary|fake|simulated) (?:world|universe|reality))\b|\bfor educational purposes\b|\bthis is (?:just )?(?:a )?(?:test|simulation|game|thought experiment)\b",
        ),
        family(
            "jailbreak.policy_puppetry",
            jb(),
            1.0,
            r"<\s*(?:interaction-config|blocked-modes|allowed-modes|allowed-responses|blocked-responses|blocked-strings?|request interaction-mode|dr-house-config|scene-summary|scene-rules)\b|\binteraction-mode\s*=|\bblocked (?:strings?|modes)\s*[:=]",
        ),
        // Five lines or more with a letter in parentheses, searched from the first
        // line's parenthesis (see `Lead`).
        {
            let list = r"(?:[^()\n]{0,40}\(\s?[a-z ]\s?\)[^()\n]{0,40}\n)";
            let words = r"\b(?:read|take|extract|combine|concatenate|put together) (?:the )?(?:first|last|capital(?:i[sz]ed)?|parenthes\w+|bracketed|bold) (?:letters?|characters?|words?)\b";
            let searched = format!(r"\(\s?[a-z ]\s?\)[^()\n]{{0,40}}\n{list}{{4,}}|{words}");
            let whole = compile("jailbreak.letter_puzzle", &format!("{list}{{5,}}|{words}"));
            Family {
                lead: Some(Box::new(Lead {
                    whole,
                    not: "()\n",
                    most: 40,
                })),
                ..family("jailbreak.letter_puzzle", jb(), 1.0, &searched)
            }
        },
        family(
            "jailbreak.adversarial_suffix",
            jb(),
            1.0,
            r#"(?:\s[!\[\]{}`~^|\\]{1,3}(?:\s+[^\s!\[\]{}`~^|\\]+){0,2}){5,}|similarlynow|oppositeley|revert with \\?"?\\?!--"#,
        ),
    ]
}

/// The heuristics' verdict on one text.
pub(crate) struct Verdict {
    pub(crate) score: f32,
    pub(crate) fired: Vec<(usize, std::ops::Range<usize>)>,
}

/// All families behind one prefilter: one pass over the text says where each can
/// start, and a family's pattern runs only there (see `prefilter`).
pub(crate) fn family_set(families: &[Family]) -> Prefixed {
    Prefixed::new(families.iter().map(|f| f.regex.clone()).collect(), 1 << 23)
}

/// The families that fire on normalized text `n` of `original`; each word of the
/// normalized text (a run of ASCII letters and digits) is also given to `word`,
/// in order, from the pass that looks the words up.
pub(crate) fn evaluate(
    families: &[Family],
    set: &Prefixed,
    original: &str,
    n: &Normalized,
    word: Option<&mut dyn FnMut(usize, usize)>,
    pairs: &mut super::prefilter::Pairs,
) -> Verdict {
    let mut fired = Vec::new();
    let mut score = 0.0;
    for (i, m) in set.first_matches(&n.text, word, pairs) {
        let f = &families[i];
        score += f.weight;
        let m = match &f.lead {
            Some(l) => {
                let from = widen(&n.text, m.start, l.not, l.most);
                l.whole.find_at(&n.text, from).map_or(m, |w| w.range())
            }
            None => m,
        };
        fired.push((i, n.original_span(original, m.start, m.end)));
    }
    Verdict { score, fired }
}

/// Where a match at `start` of `text` starts when widened back over up to `most`
/// characters not in `not` (what a leading `[^not]{0,most}` would have taken).
fn widen(text: &str, start: usize, not: &str, most: usize) -> usize {
    text[..start]
        .char_indices()
        .rev()
        .take(most)
        .take_while(|&(_, c)| !not.contains(c))
        .last()
        .map_or(start, |(i, _)| i)
}

pub(crate) fn findings(
    families: &[Family],
    v: &Verdict,
    threshold: f32,
    at: Location,
    out: &mut Vec<Finding>,
) {
    let flagged = v.score >= threshold;
    let confidence = (v.score / (threshold * 2.0)).min(1.0);
    for (i, span) in &v.fired {
        let f = &families[*i];
        if f.standalone {
            out.push(Finding::new(
                f.id,
                f.category.clone(),
                Severity::High,
                at,
                span.clone(),
            ));
            continue;
        }
        if !flagged {
            continue;
        }
        let severity = if f.weight >= 1.0 {
            Severity::Critical
        } else {
            Severity::High
        };
        out.push(
            Finding::new(f.id, f.category.clone(), severity, at, span.clone())
                .with_confidence(confidence),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The letter-puzzle family, searched from its first parenthesis and widened
    /// back, reports the span its whole pattern's first match has, on generated
    /// lists (lines with and without a letter in parentheses, the word branch
    /// near them, long lines, a parenthesis between lines).
    #[test]
    fn letter_puzzle_widened_is_the_whole_pattern_s_match() {
        let families = families();
        let set = family_set(&families);
        let i = families
            .iter()
            .position(|f| f.id == "jailbreak.letter_puzzle")
            .expect("family");
        let whole = Regex::new(&ascii_boundaries(
            r"(?:[^()\n]{0,40}\(\s?[a-z ]\s?\)[^()\n]{0,40}\n){5,}|\b(?:read|take|extract|combine|concatenate|put together) (?:the )?(?:first|last|capital(?:i[sz]ed)?|parenthes\w+|bracketed|bold) (?:letters?|characters?|words?)\b",
        ))
        .expect("pattern");
        // Each generated string is a recipe: a line per byte, most of them list
        // items (words, a letter in parentheses, words), some not.
        let words = [
            "a",
            "b c",
            "word",
            "longer words here and",
            "-",
            ".",
            "é",
            "q r s t u v",
        ];
        let (mut seen, mut matched) = (0, 0);
        for bytes in
            crate::scan::testgen::strings(b"0123456789abcdefghijklmnopqrstuvwxyz", 12, 20_000)
        {
            let mut text = String::new();
            for &b in &bytes {
                let (before, after) = (
                    words[usize::from(b) % words.len()].repeat(usize::from(b % 4)),
                    words[usize::from(b / 3) % words.len()],
                );
                let item = ["(a)", "( b )", "(c )", "( d)", "(ab)", "( )"][usize::from(b / 5) % 6];
                let line = match b % 17 {
                    0 => "read the first letters of each line".to_owned(),
                    1 => format!("{before} (x) ({after})"),
                    2 => format!("{before}{}", "z".repeat(40)),
                    _ => format!("{before} {item} {after}"),
                };
                text.push_str(line.trim());
                text.push('\n');
            }
            let n = crate::scan::normalize::normalize(&text);
            if n.text != text {
                continue;
            }
            seen += 1;
            let got = evaluate(&families, &set, &text, &n, None, &mut Default::default())
                .fired
                .into_iter()
                .find(|(f, _)| *f == i)
                .map(|(_, span)| span);
            let want = whole.find(&text).map(|m| m.range());
            assert_eq!(got, want, "{text:?}");
            // Matches of the list branch (the word branch starts with "read").
            matched += usize::from(want.is_some_and(|m| !text[m].starts_with("read")));
        }
        assert!(
            seen > 10_000 && matched > 500,
            "{seen} texts, {matched} lists matched"
        );
    }
}
