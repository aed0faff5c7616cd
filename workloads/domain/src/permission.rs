//! Authorization, deny by default. A decision combines three things:
//! 1. the matrix: what a role may do to a resource ([`grant`]), as a [`Scope`] (nothing, only
//!    what the actor owns, or anything);
//! 2. membership: a non-member of a group or direct conversation does not learn it exists
//!    (`not_found`); a non-member of a channel may read it and join, nothing else (`not_member`);
//! 3. ownership and rank: `Own` grants need the actor to own the target; acting on another
//!    member needs a higher role than theirs.
//!
//! Archived conversations are read-only.

use crate::error::{DomainError, ErrorCode};
use crate::ids::UserId;
use crate::model::{ConversationKind, Role};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    Conversation,
    Member,
    Message,
    Reaction,
    ReadMarker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Read,
    Create,
    Update,
    Delete,
}

/// How far a grant reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    None,
    /// Only targets the actor owns (own message, own reaction, own membership).
    Own,
    Any,
}

/// The matrix. Anything not listed is denied.
pub fn grant(role: Role, resource: Resource, action: Action) -> Scope {
    use Action::*;
    use Resource::*;
    match (resource, action, role) {
        (Conversation, Read, _) => Scope::Any,
        (Conversation, Update, Role::Owner | Role::Admin) => Scope::Any,
        (Conversation, Delete, Role::Owner) => Scope::Any,

        (Member, Read, _) => Scope::Any,
        (Member, Create, Role::Owner | Role::Admin) => Scope::Any,
        (Member, Update, Role::Owner | Role::Admin) => Scope::Any,
        (Member, Delete, Role::Owner | Role::Admin | Role::Moderator) => Scope::Any,
        (Member, Delete, Role::Member) => Scope::Own,

        (Message, Read, _) => Scope::Any,
        (Message, Create, _) => Scope::Own,
        (Message, Update, _) => Scope::Own,
        (Message, Delete, Role::Owner | Role::Admin | Role::Moderator) => Scope::Any,
        (Message, Delete, Role::Member) => Scope::Own,

        (Reaction, Read, _) => Scope::Any,
        (Reaction, Create, _) => Scope::Own,
        (Reaction, Delete, Role::Owner | Role::Admin | Role::Moderator) => Scope::Any,
        (Reaction, Delete, Role::Member) => Scope::Own,

        (ReadMarker, Read, _) => Scope::Any,
        (ReadMarker, Update, _) => Scope::Own,

        _ => Scope::None,
    }
}

/// What is known about the conversation when deciding.
#[derive(Debug, Clone, Copy)]
pub struct ConversationFacts {
    pub kind: ConversationKind,
    pub archived: bool,
}

/// The request to decide.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub actor: &'a UserId,
    /// The actor's role in the conversation; `None` when not a member.
    pub actor_role: Option<Role>,
    pub conversation: ConversationFacts,
    pub resource: Resource,
    pub action: Action,
    /// The user who owns the target (message sender, reacting user, member). `None` for the
    /// conversation itself.
    pub owner: Option<&'a UserId>,
    /// For member operations on someone else: that member's current role.
    pub target_role: Option<Role>,
    /// For a role change: the role being given.
    pub new_role: Option<Role>,
}

/// Decides. `Ok(())` only when every rule allows it; the error says which rule refused.
pub fn authorize(req: &Request<'_>) -> Result<(), DomainError> {
    let facts = req.conversation;
    let own = req.owner.is_none_or(|o| o == req.actor);
    let Some(role) = req.actor_role else {
        return non_member(req, own);
    };

    let writes = req.action != Action::Read;
    if facts.archived
        && writes
        && !(req.resource == Resource::Conversation && role >= Role::Admin)
        && req.resource != Resource::ReadMarker
    {
        return Err(DomainError::new(
            ErrorCode::Archived,
            "the conversation is archived",
        ));
    }
    if facts.kind == ConversationKind::Direct
        && req.resource == Resource::Member
        && matches!(req.action, Action::Create | Action::Update | Action::Delete)
    {
        return Err(DomainError::forbidden(
            "members of a direct conversation are fixed",
        ));
    }

    match grant(role, req.resource, req.action) {
        Scope::None => Err(denied(role, req)),
        Scope::Own if !own => Err(denied(role, req)),
        Scope::Own => Ok(()),
        Scope::Any => {
            // Acting on another member needs rank; so does changing one's own role (an admin
            // must not make itself owner).
            if req.resource == Resource::Member && (!own || req.action == Action::Update) {
                check_rank(role, req)?;
            }
            Ok(())
        }
    }
}

fn non_member(req: &Request<'_>, own: bool) -> Result<(), DomainError> {
    if req.conversation.kind != ConversationKind::Channel {
        return Err(DomainError::not_found("conversation"));
    }
    let read = req.action == Action::Read
        && matches!(
            req.resource,
            Resource::Conversation | Resource::Message | Resource::Member | Resource::Reaction
        );
    let join = req.resource == Resource::Member && req.action == Action::Create && own;
    if read || (join && !req.conversation.archived) {
        Ok(())
    } else {
        Err(DomainError::new(
            ErrorCode::NotMember,
            "join the channel first",
        ))
    }
}

fn check_rank(role: Role, req: &Request<'_>) -> Result<(), DomainError> {
    if let Some(target) = req.target_role
        && target >= role
        && role != Role::Owner
    {
        return Err(DomainError::forbidden(format!(
            "a {} cannot change a member whose role is {}",
            role.as_str(),
            target.as_str()
        )));
    }
    if let Some(new) = req.new_role
        && new >= role
        && role != Role::Owner
    {
        return Err(DomainError::forbidden(format!(
            "a {} can only give roles below its own",
            role.as_str()
        )));
    }
    Ok(())
}

fn denied(role: Role, req: &Request<'_>) -> DomainError {
    DomainError::forbidden(format!(
        "a {} may not {:?} this {:?}",
        role.as_str(),
        req.action,
        req.resource
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;
    use Resource::*;

    fn req<'a>(
        actor: &'a UserId,
        role: Option<Role>,
        kind: ConversationKind,
        resource: Resource,
        action: Action,
        owner: Option<&'a UserId>,
    ) -> Request<'a> {
        Request {
            actor,
            actor_role: role,
            conversation: ConversationFacts {
                kind,
                archived: false,
            },
            resource,
            action,
            owner,
            target_role: None,
            new_role: None,
        }
    }

    fn u(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    #[test]
    fn deny_by_default_for_everything_unlisted() {
        for role in [Role::Member, Role::Moderator, Role::Admin, Role::Owner] {
            assert_eq!(grant(role, Conversation, Create), Scope::None);
            assert_eq!(grant(role, ReadMarker, Delete), Scope::None);
            assert_eq!(grant(role, Reaction, Update), Scope::None);
        }
    }

    #[test]
    fn members_edit_only_their_own_messages() {
        let (me, other) = (u("me"), u("other"));
        let g = ConversationKind::Group;
        assert!(authorize(&req(&me, Some(Role::Member), g, Message, Update, Some(&me))).is_ok());
        let e = authorize(&req(
            &me,
            Some(Role::Member),
            g,
            Message,
            Update,
            Some(&other),
        ))
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        // Not even the owner edits someone else's words.
        assert!(
            authorize(&req(
                &me,
                Some(Role::Owner),
                g,
                Message,
                Update,
                Some(&other)
            ))
            .is_err()
        );
        // Moderators delete anything.
        assert!(
            authorize(&req(
                &me,
                Some(Role::Moderator),
                g,
                Message,
                Delete,
                Some(&other)
            ))
            .is_ok()
        );
        assert!(
            authorize(&req(
                &me,
                Some(Role::Member),
                g,
                Message,
                Delete,
                Some(&other)
            ))
            .is_err()
        );
    }

    #[test]
    fn non_members_of_private_conversations_see_nothing() {
        let me = u("me");
        for kind in [ConversationKind::Group, ConversationKind::Direct] {
            for (res, act) in [
                (Conversation, Read),
                (Message, Read),
                (Message, Create),
                (Member, Create),
            ] {
                let e = authorize(&req(&me, None, kind, res, act, Some(&me))).unwrap_err();
                assert_eq!(e.code, ErrorCode::NotFound);
            }
        }
    }

    #[test]
    fn channels_are_readable_and_joinable_but_not_writable_by_non_members() {
        let (me, other) = (u("me"), u("other"));
        let ch = ConversationKind::Channel;
        assert!(authorize(&req(&me, None, ch, Message, Read, None)).is_ok());
        assert!(authorize(&req(&me, None, ch, Member, Create, Some(&me))).is_ok());
        assert_eq!(
            authorize(&req(&me, None, ch, Message, Create, Some(&me)))
                .unwrap_err()
                .code,
            ErrorCode::NotMember
        );
        assert_eq!(
            authorize(&req(&me, None, ch, Member, Create, Some(&other)))
                .unwrap_err()
                .code,
            ErrorCode::NotMember
        );
    }

    #[test]
    fn rank_rules_for_member_changes() {
        let (me, other) = (u("me"), u("other"));
        let g = ConversationKind::Group;
        let mut r = req(&me, Some(Role::Admin), g, Member, Update, Some(&other));
        r.target_role = Some(Role::Member);
        r.new_role = Some(Role::Moderator);
        assert!(authorize(&r).is_ok());
        r.new_role = Some(Role::Admin);
        assert!(authorize(&r).is_err(), "admins cannot make admins");
        r.new_role = Some(Role::Member);
        r.target_role = Some(Role::Owner);
        assert!(authorize(&r).is_err(), "admins cannot demote owners");
        r.actor_role = Some(Role::Owner);
        r.new_role = Some(Role::Owner);
        r.target_role = Some(Role::Admin);
        assert!(authorize(&r).is_ok(), "owners transfer ownership");
        let mut own = req(&me, Some(Role::Admin), g, Member, Update, Some(&me));
        own.target_role = Some(Role::Admin);
        own.new_role = Some(Role::Owner);
        assert!(authorize(&own).is_err(), "admins cannot promote themselves");
        // Moderators remove members but not admins; members only leave.
        let mut rm = req(&me, Some(Role::Moderator), g, Member, Delete, Some(&other));
        rm.target_role = Some(Role::Member);
        assert!(authorize(&rm).is_ok());
        rm.target_role = Some(Role::Admin);
        assert!(authorize(&rm).is_err());
        assert!(authorize(&req(&me, Some(Role::Member), g, Member, Delete, Some(&me))).is_ok());
        assert!(
            authorize(&req(
                &me,
                Some(Role::Member),
                g,
                Member,
                Delete,
                Some(&other)
            ))
            .is_err()
        );
    }

    #[test]
    fn archived_is_read_only_and_direct_members_are_fixed() {
        let me = u("me");
        let mut r = req(
            &me,
            Some(Role::Owner),
            ConversationKind::Group,
            Message,
            Create,
            Some(&me),
        );
        r.conversation.archived = true;
        assert_eq!(authorize(&r).unwrap_err().code, ErrorCode::Archived);
        r.resource = Conversation;
        r.action = Update;
        r.owner = None;
        assert!(authorize(&r).is_ok(), "owners can unarchive");
        r.resource = Message;
        r.action = Read;
        assert!(authorize(&r).is_ok());
        let d = req(
            &me,
            Some(Role::Owner),
            ConversationKind::Direct,
            Member,
            Create,
            None,
        );
        assert_eq!(authorize(&d).unwrap_err().code, ErrorCode::Forbidden);
    }
}
